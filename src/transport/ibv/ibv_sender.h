// ibverbs kernel-bypass send (raw packet queue pairs on NVIDIA/Mellanox NICs).
//
// The sender finds the device that owns the interface address (rdma_cm),
// makes a RAW_PACKET queue pair with a send queue and a completion queue, and
// registers a send buffer cut into frame slots.  Each packet is one send work
// request: the Ethernet, IPv4 and UDP headers we build and the SPEAD header
// go into a slot; payload that lies in one of the user's memory regions
// (registered with the NIC up front) is gathered by the NIC straight from
// there, any other payload is copied into the slot behind the header.  A
// completion is requested every few work requests and at the end of each
// batch; completions give the slots back.
//
// This header needs no verbs headers: a build without them has the same API
// and make_ibv_sender throws IBV_NOT_BUILT_MESSAGE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <sys/uio.h>

namespace spead2::transport
{

constexpr std::size_t IBV_SEND_DEFAULT_BUFFER_SIZE = 512 * 1024;
constexpr int IBV_SEND_DEFAULT_MAX_POLL = 10;

/// The reference's spead2.send.UdpIbvConfig.
struct ibv_send_config
{
    std::vector<std::pair<std::string, std::uint16_t>> endpoints;
    std::string interface_address;
    std::size_t buffer_size = IBV_SEND_DEFAULT_BUFFER_SIZE;
    std::uint8_t ttl = 1;
    int comp_vector = 0;   ///< >= 0: sleep on a completion channel (vector modulo the device's count); < 0: busy poll
    int max_poll = IBV_SEND_DEFAULT_MAX_POLL;
    /// Memory the NIC may read payload from directly (start, length).
    std::vector<std::pair<const void *, std::size_t>> memory_regions;

    /// 0 selects IBV_SEND_DEFAULT_BUFFER_SIZE (as the reference).
    void set_buffer_size(std::size_t v);
    /// Throws std::invalid_argument if @a v is less than 1.
    void set_max_poll(int v);

    /// Checks in the reference's order, with its messages
    /// (std::invalid_argument): endpoints empty, interface address empty,
    /// an endpoint that is not an IPv4 multicast address, an interface
    /// address that is not IPv4, an empty memory region, overlapping regions.
    void validate() const;
};

/// One frame to send: the SPEAD packet is the concatenation of @a iov.
struct ibv_send_packet
{
    const iovec *iov;
    std::size_t n_iov;
    std::size_t size;        ///< bytes of the SPEAD packet (sum of the iov lengths)
    std::size_t substream;   ///< index into the endpoints
};

/// What a sender did (for tests and diagnostics).
struct ibv_sender_stats
{
    std::uint64_t packets = 0;
    std::uint64_t zero_copy_bytes = 0;   ///< payload bytes the NIC read from memory regions
    std::uint64_t copied_bytes = 0;      ///< payload bytes copied into slots
    std::uint64_t error_completions = 0;
};

class ibv_sender
{
public:
    virtual ~ibv_sender() = default;
    /// Post @a n packets (waiting for free slots as needed).  Throws
    /// std::system_error (EIO) if the NIC reports a failed send; the queue
    /// is reset and the sender stays usable.
    virtual void send(const ibv_send_packet *packets, std::size_t n) = 0;
    /// Wait until the NIC is done with every packet posted so far (it no
    /// longer reads the caller's memory).
    virtual void wait_idle() = 0;
    /// Wait until the NIC no longer reads any memory region for packets
    /// posted so far (cheaper than wait_idle when nothing was zero-copy).
    virtual void release_user_memory() = 0;
    virtual ibv_sender_stats get_stats() const = 0;
};

/// Build a sender for packets of at most @a max_packet_size bytes.  Errors a
/// user can act on are std::invalid_argument / std::runtime_error with the
/// reason (no device owns the address, missing CAP_NET_RAW, memlock limit,
/// libraries missing, built without ibverbs).
std::unique_ptr<ibv_sender> make_ibv_sender(const ibv_send_config &config, std::size_t max_packet_size);

} // namespace spead2::transport
