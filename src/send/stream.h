// Send streams: a heap is cut into packets (packet_generator), packets are
// gathered into batches written back to back, and each batch is handed to a
// transport at the configured rate.
//
// Sending is synchronous on the caller's thread (the Python bindings release
// the GIL): there is no per-heap queue or hand-off, so send_heap returns when
// the last packet has been given to the transport.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "send/heap.h"

namespace spead2::transport
{
class inproc_queue;
}

namespace spead2::send
{

constexpr std::size_t DEFAULT_MAX_PACKET_SIZE = 1472;
constexpr std::size_t DEFAULT_MAX_HEAPS = 4;
constexpr std::size_t DEFAULT_BURST_SIZE = 65536;
constexpr double DEFAULT_BURST_RATE_RATIO = 1.05;
/// Packets gathered before a batch is handed to the transport.
constexpr std::size_t SEND_BATCH_PACKETS = 64;

class stream_config
{
    std::size_t max_packet_size = DEFAULT_MAX_PACKET_SIZE;
    double rate = 0.0;
    std::size_t burst_size = DEFAULT_BURST_SIZE;
    std::size_t max_heaps = DEFAULT_MAX_HEAPS;
    double burst_rate_ratio = DEFAULT_BURST_RATE_RATIO;
public:
    stream_config &set_max_packet_size(std::size_t v);
    std::size_t get_max_packet_size() const { return max_packet_size; }
    /// Bytes per second of SPEAD packets; 0 = as fast as possible.
    stream_config &set_rate(double v);
    double get_rate() const { return rate; }
    stream_config &set_burst_size(std::size_t v) { burst_size = v; return *this; }
    std::size_t get_burst_size() const { return burst_size; }
    stream_config &set_max_heaps(std::size_t v);
    std::size_t get_max_heaps() const { return max_heaps; }
    stream_config &set_burst_rate_ratio(double v);
    double get_burst_rate_ratio() const { return burst_rate_ratio; }
};

class stream
{
    stream_config config;
    std::mutex mutex;                 ///< one heap at a time
    std::int64_t next_cnt = 1;
    std::int64_t cnt_step = 1;
    std::vector<std::uint8_t> buffer;     ///< SEND_BATCH_PACKETS packets back to back
    std::vector<std::size_t> sizes;
    // Rate control
    using clock = std::chrono::steady_clock;
    clock::time_point schedule{};        ///< when the bytes sent so far are due, at the rate
    clock::time_point burst_start{};     ///< last wake-up: the burst-rate clock counts from here
    std::size_t burst_bytes = 0;         ///< bytes sent since burst_start
    bool schedule_valid = false;
    void pace(std::size_t bytes);
protected:
    /// Send @a n packets stored back to back in @a data with the given sizes.
    virtual void transmit(const std::uint8_t *data, const std::size_t *sizes, std::size_t n,
                          std::size_t substream) = 0;
public:
    explicit stream(const stream_config &config);
    virtual ~stream() = default;
    const stream_config &get_config() const { return config; }
    virtual std::size_t num_substreams() const = 0;
    /// Send a heap; cnt < 0 takes the next number of the sequence.  Returns
    /// the number of bytes of SPEAD packets sent.
    std::size_t send_heap(const heap &h, std::int64_t cnt = -1, std::size_t substream = 0);
    void set_cnt_sequence(std::int64_t next, std::int64_t step);
    virtual void flush() {}
};

/// Packets appended to a byte string (concatenated, as a buffer reader reads them).
class bytes_stream : public stream
{
    std::vector<std::uint8_t> data;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t) override;
public:
    using stream::stream;
    std::size_t num_substreams() const override { return 1; }
    const std::vector<std::uint8_t> &get_data() const { return data; }
};

/// One packet per InprocQueue entry; substream i goes to queue i.
class inproc_stream : public stream
{
    std::vector<std::shared_ptr<transport::inproc_queue>> queues;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t sub) override;
public:
    inproc_stream(const stream_config &config, std::vector<std::shared_ptr<transport::inproc_queue>> queues);
    std::size_t num_substreams() const override { return queues.size(); }
    const std::vector<std::shared_ptr<transport::inproc_queue>> &get_queues() const { return queues; }
};

/// An IPv4 UDP endpoint, resolved.
struct udp_endpoint
{
    std::uint32_t address;   ///< host byte order
    std::uint16_t port;
};
/// Resolve a host name or dotted quad (IPv4); throws std::invalid_argument with the name.
udp_endpoint resolve_ipv4(const std::string &host, std::uint16_t port);

constexpr std::size_t DEFAULT_UDP_SEND_BUFFER = 512 * 1024;

/// Kernel UDP: sendmmsg batches, with UDP GSO (UDP_SEGMENT) where the kernel offers it.
class udp_stream : public stream
{
    int fd = -1;
    std::vector<udp_endpoint> endpoints;
    bool gso;
    void send_plain(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t sub);
    bool send_gso(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t sub);
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t sub) override;
public:
    /// @a ttl < 0: leave the default.  @a interface_address: empty for the default;
    /// for multicast it selects the outgoing interface, for unicast the source address.
    udp_stream(const stream_config &config, std::vector<udp_endpoint> endpoints,
               std::size_t buffer_size, const std::string &interface_address, int ttl,
               bool allow_gso = true);
    ~udp_stream() override;
    std::size_t num_substreams() const override { return endpoints.size(); }
    bool using_gso() const { return gso; }
};

/// Packets written as Ethernet/IPv4/UDP frames to a nanosecond pcap file.
class pcap_stream : public stream
{
    std::FILE *file = nullptr;
    std::vector<udp_endpoint> endpoints;
    udp_endpoint source;
    std::uint16_t ip_id = 0;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, std::size_t n, std::size_t sub) override;
public:
    pcap_stream(const stream_config &config, const std::string &filename,
                std::vector<udp_endpoint> endpoints, udp_endpoint source);
    ~pcap_stream() override;
    std::size_t num_substreams() const override { return endpoints.size(); }
    void flush() override;
};

} // namespace spead2::send
