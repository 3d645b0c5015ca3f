// Kernel UDP receive: recvmmsg batches, UDP GRO where the kernel offers it.
//
// One recvmmsg call = one batch (a wake-up makes a few calls while they come
// back full).  With GRO the
// kernel may coalesce consecutive datagrams of one flow into one buffer with
// a segment size; the reader splits it again so the core sees the original
// datagrams.  Datagrams larger than max_size are dropped and counted.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <sys/socket.h>
#include <sys/uio.h>

#include "transport/reader.h"

namespace spead2::transport
{

constexpr std::size_t DEFAULT_UDP_MAX_SIZE = 9200;
constexpr std::size_t DEFAULT_UDP_BUFFER_SIZE = 8 * 1024 * 1024;
/// Datagrams fetched per recvmmsg call (without GRO).
constexpr std::size_t UDP_MMSG_COUNT = 64;
/// Messages per recvmmsg call with GRO (each may hold many datagrams).
constexpr std::size_t UDP_GRO_MMSG_COUNT = 16;
/// recvmmsg calls (batches) per reactor wake-up while calls come back full.
constexpr std::size_t UDP_CALLS_PER_WAKEUP = 4;
/// Buffer per message when GRO is on (largest coalesced datagram).
constexpr std::size_t UDP_GRO_BUFFER = 65536;

/// How to open the socket.
struct udp_socket_spec
{
    enum class kind { unicast, multicast_v4, multicast_v6, adopt };
    kind type = kind::unicast;
    std::string host;             ///< bind address (unicast) or group (multicast)
    std::uint16_t port = 0;
    std::string interface_address;  ///< IPv4 multicast: interface to join on
    unsigned interface_index = 0;   ///< IPv6 multicast: interface index (0 = any)
    int fd = -1;                    ///< adopt: a bound UDP socket (ownership passes to the reader)
    std::size_t buffer_size = DEFAULT_UDP_BUFFER_SIZE;  ///< SO_RCVBUF; 0 = leave the default
};

/// Open and bind the socket described by @a spec; errors raise std::invalid_argument
/// (bad addresses) or std::system_error (socket calls), with the address in the message.
int open_udp_socket(const udp_socket_spec &spec);

class udp_reader : public reader
{
    int fd;
    std::size_t max_size;
    bool gro = false;
    bool registered = false;
    std::size_t buffer_bytes;                  ///< per message
    std::size_t n_msgs = UDP_MMSG_COUNT;       ///< messages per recvmmsg call
    std::vector<std::uint8_t> storage;
    std::vector<mmsghdr> msgs;
    std::vector<iovec> iovs;
    std::vector<std::uint8_t> control;         ///< per message cmsg space (GRO)
    void on_readable();
    bool receive_batch();   ///< one recvmmsg call = one batch; true if it came back full
    void unregister();
protected:
    void on_stop_requested() override;
public:
    udp_reader(packet_sink &sink, worker &thread, const udp_socket_spec &spec, std::size_t max_size);
    ~udp_reader() override;
    void start() override;
    void close() override;
    bool using_gro() const { return gro; }
    int get_fd() const { return fd; }
};

} // namespace spead2::transport
