// Built without the rdma-core headers: the ibverbs API is present, and every
// attempt to use it says why it cannot work and how to get it.
#include <stdexcept>

#include "transport/ibv/ibv_probe.h"
#include "transport/ibv/ibv_reader.h"
#include "transport/ibv/ibv_sender.h"

namespace spead2::transport
{

std::shared_ptr<reader> make_ibv_reader(packet_sink &, worker &, const ibv_config &)
{
    throw std::runtime_error(IBV_NOT_BUILT_MESSAGE);
}

const char *ibv_reader_kind(const reader &)
{
    return "other";
}

std::shared_ptr<const ibv_reader_stats> ibv_reader_statistics(const reader &)
{
    return nullptr;
}

std::unique_ptr<ibv_sender> make_ibv_sender(const ibv_send_config &, std::size_t)
{
    // Even for an invalid configuration, as the reader: the build is what is wrong.
    throw std::runtime_error(IBV_NOT_BUILT_MESSAGE);
}

ibv_probe_result ibv_probe(const std::string &)
{
    throw std::runtime_error(IBV_NOT_BUILT_MESSAGE);
}

} // namespace spead2::transport
