#include "send/udp_ibv_stream.h"

#include <system_error>

namespace spead2::send
{

namespace
{

/// A failed send (the NIC reported an error completion) is a send_error
/// (OSError in Python), as the other streams report failures.
template<typename F>
void as_send_error(F &&f)
{
    try
    {
        f();
    }
    catch (const send_error &)
    {
        throw;
    }
    catch (const std::system_error &e)
    {
        throw send_error(e.code(), e.what());
    }
}

} // anonymous namespace

udp_ibv_stream::udp_ibv_stream(const stream_config &config, const transport::ibv_send_config &ibv_config,
                               std::shared_ptr<void> keepalive)
    : stream(config, true),
      keepalive(std::move(keepalive)),
      sender(transport::make_ibv_sender(ibv_config, config.get_max_packet_size())),
      n_endpoints(ibv_config.endpoints.size())
{
}

void udp_ibv_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                              std::size_t n)
{
    // Not used by the base in gather mode; kept correct all the same.
    flat_iov.resize(n);
    packets.resize(n);
    for (std::size_t i = 0; i < n; i++)
    {
        flat_iov[i] = iovec{const_cast<std::uint8_t *>(d), sizes[i]};
        packets[i] = transport::ibv_send_packet{&flat_iov[i], 1, sizes[i], subs[i]};
        d += sizes[i];
    }
    as_send_error([&] { sender->send(packets.data(), n); });
}

void udp_ibv_stream::transmit_gathered(const iovec *iov, const gathered_packet *p, std::size_t n)
{
    packets.resize(n);
    for (std::size_t i = 0; i < n; i++)
        packets[i] = transport::ibv_send_packet{iov + p[i].first, p[i].n_iov, p[i].size, p[i].substream};
    as_send_error([&] { sender->send(packets.data(), n); });
}

void udp_ibv_stream::end_of_group()
{
    as_send_error([&] { sender->release_user_memory(); });
}

void udp_ibv_stream::flush()
{
    as_send_error([&] { sender->wait_idle(); });
}

} // namespace spead2::send
