// The ibverbs reader factory: the multi-packet reader where the device has
// it, else the plain reader.  The readers live in ibv_mprq.cpp and
// ibv_plain.cpp, what they share in ibv_base.cpp.
#include "transport/ibv/ibv_reader.h"

#include <cstdlib>
#include <string>

#include "common/logging.h"
#include "transport/ibv/ibv_mprq.h"
#include "transport/ibv/ibv_plain.h"

namespace spead2::transport
{

using ibv_detail::ibv_reader_base;
using ibv_detail::mprq_reader;
using ibv_detail::mprq_unsupported;
using ibv_detail::plain_reader;

std::shared_ptr<reader> make_ibv_reader(packet_sink &sink, worker &thread, const ibv_config &config)
{
    config.validate();
    // SPEAD2_IBV_NO_MPRQ=1 forces the plain reader (to work around a driver
    // problem with striding queues, or to test the plain path on hardware).
    const char *no_mprq = std::getenv("SPEAD2_IBV_NO_MPRQ");
    if (no_mprq && *no_mprq && std::string(no_mprq) != "0")
        log_info("SPEAD2_IBV_NO_MPRQ is set: using the plain ibverbs reader");
    else
    {
        try
        {
            return std::make_shared<mprq_reader>(sink, thread, config);
        }
        catch (mprq_unsupported &e)
        {
            log_debug("multi-packet receive queue unavailable (%s); using one work request per packet",
                      e.what());
        }
    }
    return std::make_shared<plain_reader>(sink, thread, config);
}

std::shared_ptr<const ibv_reader_stats> ibv_reader_statistics(const reader &r)
{
    if (auto *p = dynamic_cast<const ibv_reader_base *>(&r))
        return p->get_stats();
    return nullptr;
}

const char *ibv_reader_kind(const reader &r)
{
    if (dynamic_cast<const mprq_reader *>(&r))
        return "mprq";
    if (dynamic_cast<const plain_reader *>(&r))
        return "plain";
    return "other";
}

} // namespace spead2::transport
