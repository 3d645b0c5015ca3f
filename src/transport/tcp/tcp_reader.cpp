#include "transport/tcp/tcp_reader.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/thread_pool.h"
#include "common/socket_util.h"

namespace spead2::transport
{

namespace
{

/// Size of the packet at @a data (@a n bytes available): 0 = need more
/// bytes, -1 = not a SPEAD packet (or item pointers alone beyond @a max_size,
/// whose extent could not be found without buffering them).
std::int64_t packet_size(const std::uint8_t *data, std::size_t n, std::size_t max_size)
{
    if (n < protocol::HEADER_SIZE)
        return 0;
    if (protocol::load_be16(data) != protocol::MAGIC_VERSION)
        return -1;
    const int id_bytes = data[2], addr_bytes = data[3];
    if (id_bytes == 0 || addr_bytes == 0 || id_bytes + addr_bytes != 8)
        return -1;
    const std::size_t n_items = protocol::load_be16(data + 6);
    const std::size_t head = protocol::HEADER_SIZE + n_items * protocol::ITEM_POINTER_SIZE;
    if (head > max_size)
        return -1;
    if (n < head)
        return 0;
    const int hab = addr_bytes * 8;
    for (std::size_t i = 0; i < n_items; i++)
    {
        auto p = protocol::decode_item_pointer(
            protocol::load_be64(data + protocol::HEADER_SIZE + i * protocol::ITEM_POINTER_SIZE), hab);
        if (p.immediate && p.id == protocol::PAYLOAD_LENGTH_ID)
            return std::int64_t(head + p.value);
    }
    return -1;   // no PAYLOAD_LENGTH: the packet's extent is unknown
}

} // anonymous namespace

int open_tcp_acceptor(const std::string &bind_hostname, std::uint16_t port, std::size_t buffer_size)
{
    socklen_t length;
    sockaddr_storage addr = resolve_address(bind_hostname, port, AF_UNSPEC, length);
    int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        throw std::system_error(errno, std::generic_category(), "socket(SOCK_STREAM)");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    try
    {
        // Set on the listening socket so the accepted one inherits it.
        set_socket_buffer(fd, true, buffer_size);
        if (::bind(fd, reinterpret_cast<sockaddr *>(&addr), length) < 0)
            throw std::system_error(errno, std::generic_category(),
                                    "binding TCP socket to port " + std::to_string(port));
        if (::listen(fd, 1) < 0)
            throw std::system_error(errno, std::generic_category(), "listen");
    }
    catch (...)
    {
        ::close(fd);
        throw;
    }
    return fd;
}

tcp_reader::tcp_reader(packet_sink &sink, worker &thread, int acceptor_fd, std::size_t max_size)
    : reader(sink, thread), acceptor(acceptor_fd), max_size(max_size)
{
    if (max_size < protocol::HEADER_SIZE)
    {
        ::close(acceptor_fd);
        throw std::invalid_argument("max_size must be at least 8");
    }
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(acceptor, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
    {
        ::close(acceptor_fd);
        throw std::invalid_argument("acceptor must be a listening TCP socket");
    }
    int flags = ::fcntl(acceptor, F_GETFL);
    ::fcntl(acceptor, F_SETFL, flags | O_NONBLOCK);
    buffer.resize(max_size + TCP_READ_CHUNK);
    headers.reserve(PACKET_GROUP);
}

tcp_reader::~tcp_reader()
{
    close();
}

void tcp_reader::close()
{
    if (acceptor >= 0)
    {
        ::close(acceptor);
        acceptor = -1;
    }
    if (conn >= 0)
    {
        ::close(conn);
        conn = -1;
    }
}

void tcp_reader::start()
{
    auto self = std::static_pointer_cast<tcp_reader>(shared_from_this());
    thread.post([self] {
        if (self->stopping.load() || self->acceptor < 0)
            return;
        self->thread.add_fd(self->acceptor, [self] { self->on_acceptable(); });
        self->registered = true;
    });
}

void tcp_reader::unregister()
{
    if (!registered)
        return;
    thread.remove_fd(conn >= 0 ? conn : acceptor);
    registered = false;
}

void tcp_reader::on_stop_requested()
{
    auto self = std::static_pointer_cast<tcp_reader>(shared_from_this());
    thread.post([self] { self->unregister(); });
}

void tcp_reader::on_acceptable()
{
    if (stopping.load())
        return;
    int fd = ::accept4(acceptor, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
    {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            log_warning("TCP accept failed: %s", std::strerror(errno));
        return;
    }
    // One connection only: stop listening.
    unregister();
    ::close(acceptor);
    acceptor = -1;
    conn = fd;
    auto self = std::static_pointer_cast<tcp_reader>(shared_from_this());
    thread.add_fd(conn, [self] { self->on_readable(); });
    registered = true;
}

bool tcp_reader::parse(batch &b)
{
    std::size_t pos = 0;
    headers.clear();
    auto flush = [&] {
        if (!headers.empty())
        {
            bool more = b.add(headers.data(), headers.size());
            headers.clear();
            return more;
        }
        return true;
    };
    bool ok = true;
    while (pos < filled)
    {
        if (skip)
        {
            const std::size_t n = std::min<std::uint64_t>(skip, filled - pos);
            pos += n;
            skip -= n;
            continue;
        }
        const std::int64_t size = packet_size(buffer.data() + pos, filled - pos, max_size);
        if (size < 0)
        {
            // As the reference: drop one header's worth of bytes and try again.
            log_warning("TCP stream: bytes that are not a SPEAD packet header; skipping 8 bytes");
            b.malformed(1);
            skip = protocol::HEADER_SIZE;
            continue;
        }
        if (size == 0)
            break;   // need more bytes
        if (std::uint64_t(size) > max_size)
        {
            log_info("TCP stream: dropped a packet of %lld bytes (max_size is %zu)",
                     (long long) size, max_size);
            b.malformed(1);
            skip = std::uint64_t(size);
            continue;
        }
        if (filled - pos < std::uint64_t(size))
            break;   // the rest of this packet is still to come
        protocol::packet_header ph;
        if (protocol::decode_packet(ph, buffer.data() + pos, std::size_t(size)) == protocol::decode_status::ok
            && ph.size == std::size_t(size))
        {
            headers.push_back(ph);
            if (headers.size() == PACKET_GROUP && !flush())
            {
                ok = false;
                break;
            }
        }
        else
            b.malformed(1);
        pos += std::size_t(size);
    }
    if (!flush())
        ok = false;
    // Keep the unparsed tail at the start of the buffer.
    if (pos > 0 && pos < filled)
        std::memmove(buffer.data(), buffer.data() + pos, filled - pos);
    filled -= std::min(pos, filled);
    return ok;
}

void tcp_reader::on_readable()
{
    if (stopping.load() || conn < 0)
        return;
    batch b(sink);
    if (!b.active())
        return;
    const ssize_t n = ::recv(conn, buffer.data() + filled, buffer.size() - filled, 0);
    if (n < 0)
    {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        log_warning("TCP connection error: %s", std::strerror(errno));
        unregister();
        b.end_of_stream();
        return;
    }
    if (n == 0)
    {
        if (filled > 0 || skip > 0)
            log_warning("TCP connection closed in the middle of a packet; %zu bytes dropped", filled);
        unregister();
        b.end_of_stream();
        return;
    }
    filled += std::size_t(n);
    if (!parse(b))
    {
        unregister();
        b.end_of_stream();
    }
}

} // namespace spead2::transport
