// SPEAD over TCP: the packets of each batch are already back to back in
// memory, which is exactly the byte stream a TCP receiver parses, so a batch
// is written with send() until all of it has gone.
#include <cerrno>
#include <cmath>
#include <cstring>
#include <system_error>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/socket_util.h"
#include "send/stream.h"

namespace spead2::send
{

namespace
{

[[noreturn]] void throw_os_error(int err, const std::string &what)
{
    throw send_error(std::error_code(err, std::generic_category()), what);
}

/// Connect @a fd to @a endpoint, waiting at most @a timeout seconds (< 0: no limit).
void connect_with_timeout(int fd, const socket_endpoint &endpoint, double timeout)
{
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        throw std::system_error(errno, std::generic_category(), "fcntl");
    int r = ::connect(fd, reinterpret_cast<const sockaddr *>(&endpoint.address), endpoint.length);
    if (r < 0 && errno != EINPROGRESS)
        throw_os_error(errno, "connect");
    if (r < 0)
    {
        pollfd p{fd, POLLOUT, 0};
        const int ms = timeout < 0 ? -1 : int(std::ceil(timeout * 1000.0));
        int ready;
        do
            ready = ::poll(&p, 1, ms);
        while (ready < 0 && errno == EINTR);
        if (ready < 0)
            throw_os_error(errno, "poll");
        if (ready == 0)
            throw_os_error(ETIMEDOUT, "connect: no connection within the timeout");
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            throw_os_error(errno, "getsockopt");
        if (err != 0)
            throw_os_error(err, "connect");
    }
    if (fcntl(fd, F_SETFL, flags) < 0)
        throw std::system_error(errno, std::generic_category(), "fcntl");
}

} // anonymous namespace

tcp_stream::tcp_stream(const stream_config &config, int fd)
    : stream(config), fd(fd)
{
}

tcp_stream::tcp_stream(const stream_config &config, const socket_endpoint &endpoint, std::size_t buffer_size,
                       const std::string &interface_address, double timeout)
    : stream(config)
{
    int s = ::socket(endpoint.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        throw std::system_error(errno, std::generic_category(), "socket");
    try
    {
        set_socket_buffer(s, false, buffer_size);
        if (!interface_address.empty())
        {
            socket_endpoint local = resolve_endpoint(interface_address, 0);
            if (::bind(s, reinterpret_cast<const sockaddr *>(&local.address), local.length) < 0)
                throw std::system_error(errno, std::generic_category(), "bind");
        }
        connect_with_timeout(s, endpoint, timeout);
    }
    catch (...)
    {
        ::close(s);
        throw;
    }
    fd = s;
}

tcp_stream::~tcp_stream()
{
    if (fd >= 0)
        ::close(fd);
}

void tcp_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *, std::size_t n)
{
    std::size_t left = 0;
    for (std::size_t i = 0; i < n; i++)
        left += sizes[i];
    while (left > 0)
    {
        ssize_t r = ::send(fd, d, left, MSG_NOSIGNAL);
        if (r < 0)
        {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
            {
                wait_writable(fd);   // an adopted socket may be non-blocking
                continue;
            }
            throw_os_error(errno, "send");
        }
        d += r;
        left -= std::size_t(r);
    }
}

} // namespace spead2::send
