// ibverbs kernel-bypass receive (raw packet queues on NVIDIA/Mellanox NICs).
//
// Two readers share everything but the receive queue:
//   - mprq: a multi-packet (striding) receive queue through mlx5 direct
//     verbs: each work request is a large buffer the NIC fills with many
//     frames, one per run of 64-byte strides;
//   - plain: one receive work request per frame slot (any verbs NIC).
// make_ibv_reader tries mprq first and falls back to plain when the device or
// driver lacks it.  Frames are steered to the queue by one flow rule per
// endpoint; multicast groups are joined through a kernel socket so switches
// forward the traffic.  Each completion-queue poll is one batch for the core.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "transport/reader.h"

namespace spead2::transport
{

constexpr std::size_t IBV_DEFAULT_BUFFER_SIZE = 16 * 1024 * 1024;
constexpr std::size_t IBV_DEFAULT_MAX_SIZE = 9200;
constexpr int IBV_DEFAULT_MAX_POLL = 10;

/// The reference's UdpIbvConfig.
struct ibv_config
{
    std::vector<std::pair<std::string, std::uint16_t>> endpoints;
    std::string interface_address;
    std::size_t buffer_size = IBV_DEFAULT_BUFFER_SIZE;
    std::size_t max_size = IBV_DEFAULT_MAX_SIZE;
    int comp_vector = 0;     ///< >= 0: interrupt-driven (vector modulo the device's count); < 0: busy polling
    int max_poll = IBV_DEFAULT_MAX_POLL;

    /// 0 selects IBV_DEFAULT_BUFFER_SIZE (as the reference).
    void set_buffer_size(std::size_t v);
    /// Throw std::invalid_argument for 0 (max_size) or less than 1 (max_poll).
    void set_max_size(std::size_t v);
    void set_max_poll(int v);

    /// Throws std::invalid_argument with a clear message if unusable.
    void validate() const;
};

/// What an ibverbs reader counted.  A receive queue that enters the error
/// state (an error completion other than a local length error, or a fatal
/// queue event) is reset and all its buffers re-posted; if that fails, or
/// keeps failing without a packet received in between, the reader stops the
/// stream and says why in @ref error.
struct ibv_reader_stats
{
    std::atomic<std::uint64_t> error_completions{0};  ///< completions with an error status
    std::atomic<std::uint64_t> recoveries{0};         ///< receive queue reset and re-posted
    std::atomic<std::uint64_t> async_events{0};       ///< asynchronous device events for this reader
    std::atomic<bool> failed{false};                  ///< the reader stopped the stream
    mutable std::mutex mutex;
    std::string error;                                ///< why it stopped (guarded by mutex)
};

/// Whether this build has the ibverbs receiver (the rdma-core headers were
/// found at build time).  Without it the configuration types exist, but
/// make_ibv_reader throws std::runtime_error(IBV_NOT_BUILT_MESSAGE).
bool ibv_compiled();

/// The error a build without the rdma-core headers gives for any ibverbs use.
extern const char *const IBV_NOT_BUILT_MESSAGE;

/// Construct the best available ibverbs reader (MPRQ, else plain).  Errors a
/// user can act on are raised as std::runtime_error / std::invalid_argument
/// with the reason (no device owns the address, no flow steering, missing
/// CAP_NET_RAW, libraries missing, built without ibverbs).
std::shared_ptr<reader> make_ibv_reader(packet_sink &sink, worker &thread, const ibv_config &config);

/// Which kind of reader make_ibv_reader built (for tests and diagnostics).
const char *ibv_reader_kind(const reader &r);

/// The counters of an ibverbs reader (nullptr if @a r is not one).  They
/// outlive the reader.
std::shared_ptr<const ibv_reader_stats> ibv_reader_statistics(const reader &r);

/// SPEAD2_IBV_INTERFACE support: if the variable is set, an IPv4 UDP reader
/// for (host, port) becomes an ibverbs reader.  Returns the config to use, or
/// nullopt if the override is not active.  @a explicit_interface (non-empty)
/// wins over the variable's value.  SPEAD2_IBV_COMP_VECTOR sets comp_vector.
std::optional<ibv_config> ibv_override(const std::string &host, std::uint16_t port,
                                       std::size_t max_size, std::size_t buffer_size,
                                       const std::string &explicit_interface);

} // namespace spead2::transport
