// spead2.send.UdpIbvStream: a send stream whose transport is the ibverbs
// sender (transport/ibv/ibv_sender.h).  The stream hands over packets as
// parts (gather mode), so payload in the configured memory regions reaches
// the NIC without a copy; every send_heaps returns only once the NIC is
// done reading those regions.
#pragma once

#include <memory>
#include <vector>

#include "send/stream.h"
#include "transport/ibv/ibv_sender.h"

namespace spead2::send
{

class udp_ibv_stream : public stream
{
    std::shared_ptr<void> keepalive;   ///< owner of the memory regions: released after the sender
    std::unique_ptr<transport::ibv_sender> sender;
    std::size_t n_endpoints;
    std::vector<transport::ibv_send_packet> packets;
    std::vector<iovec> flat_iov;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
    void transmit_gathered(const iovec *iov, const gathered_packet *p, std::size_t n) override;
    void end_of_group() override;
public:
    /// Throws as make_ibv_sender does (the reference's errors for a bad
    /// configuration).  @a keepalive owns the memory regions' memory (or
    /// keeps it alive); it is released only after the regions have been
    /// deregistered from the NIC.
    udp_ibv_stream(const stream_config &config, const transport::ibv_send_config &ibv_config,
                   std::shared_ptr<void> keepalive = nullptr);
    std::size_t num_substreams() const override { return n_endpoints; }
    void flush() override;
    transport::ibv_sender_stats get_sender_stats() const { return sender->get_stats(); }
};

} // namespace spead2::send
