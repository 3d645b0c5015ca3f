// TCP receive: a listening socket accepts one connection, whose byte stream
// is a sequence of SPEAD packets (no other framing: each packet's size comes
// from its own header).  Each read of the connection is one batch.
//
// A packet larger than max_size is skipped (its bytes are read and dropped),
// bytes that are not a SPEAD header end the stream (a byte stream cannot be
// resynchronised), and so does the connection closing, also mid-packet (the
// partial packet is dropped).  Each case is logged; none raises.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "transport/reader.h"

namespace spead2::transport
{

constexpr std::size_t DEFAULT_TCP_MAX_SIZE = 65536;
constexpr std::size_t DEFAULT_TCP_BUFFER_SIZE = 212992;
/// Bytes asked for per read, beyond room for one whole packet.
constexpr std::size_t TCP_READ_CHUNK = 256 * 1024;

/// Open a listening TCP socket on @a bind_hostname:@a port (empty = any).
int open_tcp_acceptor(const std::string &bind_hostname, std::uint16_t port, std::size_t buffer_size);

class tcp_reader : public reader
{
    int acceptor;            ///< listening socket until a connection arrives
    int conn = -1;
    std::size_t max_size;
    bool registered = false;
    std::vector<std::uint8_t> buffer;
    std::size_t filled = 0;          ///< bytes of buffer holding unparsed data
    std::uint64_t skip = 0;          ///< bytes of an oversize packet still to drop
    std::vector<protocol::packet_header> headers;

    void on_acceptable();
    void on_readable();
    void unregister();
    /// Parse the complete packets in the buffer into @a b; false: bad header.
    bool parse(batch &b);

protected:
    void on_stop_requested() override;

public:
    /// Takes ownership of the listening socket @a acceptor_fd.
    tcp_reader(packet_sink &sink, worker &thread, int acceptor_fd, std::size_t max_size);
    ~tcp_reader() override;
    void start() override;
    void close() override;
};

} // namespace spead2::transport
