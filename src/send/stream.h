// Send streams: a heap is cut into packets (packet_generator), packets are
// gathered into batches written back to back, and each batch is handed to a
// transport at the configured rate.
//
// Sending is synchronous on the caller's thread (the Python bindings release
// the GIL), so send_heap(s) returns when the last packet has been given to
// the transport.  The asyncio layer queues heaps for one worker thread per
// stream; max_heaps bounds the heaps reserved or in flight (reserve()), and a
// group that would exceed it is refused with EAGAIN, as the reference does.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <system_error>

#include <sys/socket.h>

#include "send/heap.h"
#include "send/pacer.h"

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

/// How the rate is enforced.  No transport here has hardware rate limiting,
/// so HW and AUTO pace in software like SW.
enum class rate_method : int
{
    sw = 0,
    hw = 1,
    automatic = 2,
};
constexpr rate_method DEFAULT_RATE_METHOD = rate_method::automatic;

/// How the packets of the heaps of one send_heaps call are interleaved.
enum class group_mode : int
{
    round_robin = 0,   ///< one packet of each unfinished heap in turn
    serial = 1,        ///< all packets of one heap, then the next
};

class stream_config
{
    std::size_t max_packet_size = DEFAULT_MAX_PACKET_SIZE;
    double rate = 0.0;
    std::size_t burst_size = DEFAULT_BURST_SIZE;
    std::size_t max_heaps = DEFAULT_MAX_HEAPS;
    double burst_rate_ratio = DEFAULT_BURST_RATE_RATIO;
    rate_method method = DEFAULT_RATE_METHOD;
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
    stream_config &set_rate_method(rate_method m) { method = m; return *this; }
    rate_method get_rate_method() const { return method; }
    /// The rate at which a burst may be sent (rate × burst_rate_ratio).
    double get_burst_rate() const { return rate * burst_rate_ratio; }
};

/// One heap of a send_heaps call.
struct heap_reference
{
    const heap *h = nullptr;
    std::int64_t cnt = -1;             ///< < 0: the next number of the stream's sequence
    std::size_t substream_index = 0;
    double rate = -1.0;                ///< < 0: the stream's rate; 0: not paced
};

/// An error Python sees as OSError(errno): for a heap (group) that cannot
/// be sent, code() is EINVAL for a bad request (empty group, substream out
/// of range, cnt out of range) and EAGAIN when more than max_heaps heaps
/// would be in flight; a TCP connection that fails or breaks gives the
/// socket's errno.
class send_error : public std::system_error
{
public:
    using std::system_error::system_error;
};

/// One packet of a gathered batch (see stream::transmit_gathered): its
/// parts are iov[first] (SPEAD header and item pointers, in the stream's
/// scratch buffer) followed by the payload pieces iov[first + 1 ..
/// first + n_iov - 1], which point into the heaps' item data.
struct gathered_packet
{
    std::size_t first;
    std::size_t n_iov;
    std::size_t size;        ///< bytes of the whole SPEAD packet
    std::size_t substream;
};

class stream
{
    stream_config config;
    bool gather;                          ///< the transport takes packets as parts
    std::mutex mutex;                 ///< one group at a time
    std::int64_t next_cnt = 1;
    std::int64_t cnt_step = 1;
    std::vector<std::uint8_t> buffer;     ///< SEND_BATCH_PACKETS packets back to back
    std::vector<std::size_t> sizes;
    std::vector<std::size_t> substreams;  ///< per packet of the batch
    std::vector<iovec> iov;               ///< gather mode: the parts of the batch's packets
    std::vector<iovec> payload_scratch;
    std::vector<gathered_packet> gathered;
    std::vector<packet_generator> generators;
    std::vector<std::size_t> active;      ///< generators with packets left, in turn order
    std::vector<double> rates;            ///< per heap of the group
    // Heaps reserved or being sent (at most max_heaps).
    std::mutex flight_mutex;
    std::size_t in_flight = 0;
    steady_clock_source real_clock;
    clock_source *clock = &real_clock;    ///< what the pacer and pcap timestamps use
    pacer rate_pacer;
protected:
    clock_source &get_clock() { return *clock; }
    /// Send @a n packets stored back to back in @a data with the given
    /// sizes; packet i goes to substream @a subs[i].
    virtual void transmit(const std::uint8_t *data, const std::size_t *sizes, const std::size_t *subs,
                          std::size_t n) = 0;
    /// Gather mode (a stream constructed with gather = true calls this
    /// instead of transmit): send @a n packets made of the parts in @a iov.
    /// The headers live in a scratch buffer that is reused after this
    /// returns; the payload pieces point into the callers' heaps, which stay
    /// valid until send_heaps returns (see end_of_group).
    virtual void transmit_gathered(const iovec *iov, const gathered_packet *packets, std::size_t n);
    /// Called once at the end of every send_heaps, after the last batch: a
    /// transport that keeps referring to payload memory after
    /// transmit_gathered returned (a NIC reading it by DMA) must be done
    /// with it before this returns.
    virtual void end_of_group() {}
    /// @a gather: the transport takes packets as parts (transmit_gathered)
    /// rather than copied back to back (transmit).
    stream(const stream_config &config, bool gather);
public:
    explicit stream(const stream_config &config);
    virtual ~stream() = default;
    const stream_config &get_config() const { return config; }
    virtual std::size_t num_substreams() const = 0;

    /// Reserve room for @a n heaps in flight; throws send_error(EAGAIN)
    /// when that would exceed max_heaps.  send_heaps(..., reserved=true)
    /// releases them.
    void reserve(std::size_t n);
    void release(std::size_t n);

    /// Send a group of heaps, interleaving their packets as @a mode says.
    /// Returns the number of bytes of SPEAD packets sent.  Throws
    /// send_error (see there); nothing is sent and the cnt sequence is
    /// unchanged when it does.
    std::size_t send_heaps(const heap_reference *refs, std::size_t n, group_mode mode, bool reserved = false);
    /// Send one heap; cnt < 0 takes the next number of the sequence.
    std::size_t send_heap(const heap &h, std::int64_t cnt = -1, std::size_t substream = 0, double rate = -1.0);
    void set_cnt_sequence(std::int64_t next, std::int64_t step);
    /// Pace (and stamp pcap records) by @a c instead of the real clock;
    /// nullptr goes back to the real clock.  @a c must outlive its use.
    void set_clock(clock_source *c);
    virtual void flush() {}
};

/// Packets appended to a byte string (concatenated, as a buffer reader reads them).
///
/// Streams are often short-lived (one per test or per batch of heaps).  A
/// destroyed stream leaves its buffer (up to BYTES_STREAM_CACHE_LIMIT bytes of
/// capacity) for the next one: otherwise glibc returns the memory to the
/// kernel at each free and every new stream pays a page fault per 4 KiB it
/// writes (measured: 6× the cost of packetising 64 KiB heaps).
class bytes_stream : public stream
{
    std::vector<std::uint8_t> data;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
public:
    static constexpr std::size_t BYTES_STREAM_CACHE_LIMIT = 64 << 20;
    explicit bytes_stream(const stream_config &config);
    ~bytes_stream() override;
    std::size_t num_substreams() const override { return 1; }
    const std::vector<std::uint8_t> &get_data() const { return data; }
};

/// One packet per InprocQueue entry; substream i goes to queue i.
class inproc_stream : public stream
{
    std::vector<std::shared_ptr<transport::inproc_queue>> queues;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
public:
    inproc_stream(const stream_config &config, std::vector<std::shared_ptr<transport::inproc_queue>> queues);
    std::size_t num_substreams() const override { return queues.size(); }
    const std::vector<std::shared_ptr<transport::inproc_queue>> &get_queues() const { return queues; }
};

/// An IPv4 UDP endpoint, resolved (pcap frames).
struct udp_endpoint
{
    std::uint32_t address;   ///< host byte order
    std::uint16_t port;
};
/// Resolve a host name or dotted quad (IPv4); throws std::invalid_argument with the name.
udp_endpoint resolve_ipv4(const std::string &host, std::uint16_t port);

/// A resolved socket address, IPv4 or IPv6.
struct socket_endpoint
{
    sockaddr_storage address{};
    socklen_t length = 0;
    int family() const { return address.ss_family; }
    bool is_multicast() const;
};
/// Resolve @a host (name, dotted quad or IPv6 literal) and @a port; the
/// first address found.  Throws std::runtime_error when it cannot.
socket_endpoint resolve_endpoint(const std::string &host, std::uint16_t port);

/// Wait until @a fd can be written to (for sockets the caller made non-blocking).
void wait_writable(int fd);

constexpr std::size_t DEFAULT_UDP_SEND_BUFFER = 512 * 1024;
constexpr std::size_t DEFAULT_TCP_SEND_BUFFER = 212992;

/// How a udp_stream sets up its socket: the constructor forms of the
/// reference's UdpStream.
struct udp_socket_options
{
    enum class kind
    {
        plain,           ///< interface_address (optional) is the source address (bind)
        multicast,       ///< multicast endpoints (IPv4 or IPv6), ttl = hops
        multicast_v4,    ///< IPv4 multicast endpoints, ttl, outgoing interface by address
        multicast_v6,    ///< IPv6 multicast endpoints, ttl, outgoing interface by index
        adopt,           ///< a socket given by the caller (fd, duplicated by the caller)
    };
    kind type = kind::plain;
    std::size_t buffer_size = DEFAULT_UDP_SEND_BUFFER;
    std::string interface_address;
    unsigned int interface_index = 0;
    int ttl = 1;
    int fd = -1;               ///< adopt: the stream owns it from construction on
    bool allow_gso = true;
};

/// Kernel UDP (IPv4 or IPv6): sendmmsg batches, with UDP GSO (UDP_SEGMENT)
/// where the kernel offers it.
class udp_stream : public stream
{
    int fd = -1;
    std::vector<socket_endpoint> endpoints;
    bool gso;
    void send_plain(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n);
    bool send_gso(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n);
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
public:
    /// Errors as the reference: std::invalid_argument (ValueError) for
    /// endpoints that do not fit the form, std::out_of_range (IndexError)
    /// for a ttl outside 0-255, std::system_error (RuntimeError) when the
    /// socket cannot be set up.
    udp_stream(const stream_config &config, std::vector<socket_endpoint> endpoints,
               const udp_socket_options &options);
    ~udp_stream() override;
    std::size_t num_substreams() const override { return endpoints.size(); }
    bool using_gso() const { return gso; }
};

/// SPEAD over TCP: packets written back to back on one connection.
class tcp_stream : public stream
{
    int fd = -1;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
public:
    /// Adopt a (connected) stream socket; the stream owns @a fd.
    tcp_stream(const stream_config &config, int fd);
    /// Connect to @a endpoint (optionally from @a interface_address), waiting
    /// at most @a timeout seconds (< 0: as long as the kernel tries).  A
    /// failed connection raises send_error with the errno (OSError:
    /// ConnectionRefusedError, TimeoutError, ...).
    tcp_stream(const stream_config &config, const socket_endpoint &endpoint, std::size_t buffer_size,
               const std::string &interface_address, double timeout = -1.0);
    ~tcp_stream() override;
    std::size_t num_substreams() const override { return 1; }
};

/// Packets written as Ethernet/IPv4/UDP frames to a nanosecond pcap file.
class pcap_stream : public stream
{
    std::FILE *file = nullptr;
    std::vector<udp_endpoint> endpoints;
    udp_endpoint source;
    std::uint16_t ip_id = 0;
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs, std::size_t n) override;
public:
    pcap_stream(const stream_config &config, const std::string &filename,
                std::vector<udp_endpoint> endpoints, udp_endpoint source);
    ~pcap_stream() override;
    std::size_t num_substreams() const override { return endpoints.size(); }
    void flush() override;
};

} // namespace spead2::send
