#include "common/socket_util.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <netdb.h>

#include "common/logging.h"

namespace spead2
{

sockaddr_storage resolve_address(const std::string &host, std::uint16_t port, int family, socklen_t &length)
{
    addrinfo hints{};
    hints.ai_family = family;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo *res = nullptr;
    const std::string service = std::to_string(port);
    int status = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
    if (status != 0 || !res)
        throw std::runtime_error("Host not found: '" + host + "' (" + gai_strerror(status) + ")");
    sockaddr_storage out{};
    std::memcpy(&out, res->ai_addr, res->ai_addrlen);
    length = res->ai_addrlen;
    freeaddrinfo(res);
    return out;
}

in_addr resolve_ipv4(const std::string &host, const char *what)
{
    socklen_t length;
    try
    {
        sockaddr_storage sa = resolve_address(host.empty() ? "0.0.0.0" : host, 0, AF_INET, length);
        return reinterpret_cast<sockaddr_in *>(&sa)->sin_addr;
    }
    catch (std::runtime_error &)
    {
        throw std::invalid_argument(std::string(what) + " '" + host
                                    + "' is not an IPv4 address or resolvable host name");
    }
}

namespace
{

int socket_buffer_size(int fd, int option)
{
    int got = 0;
    socklen_t len = sizeof(got);
    getsockopt(fd, SOL_SOCKET, option, &got, &len);
    return got / 2;   // Linux reports twice the usable size
}

} // anonymous namespace

void set_socket_buffer(int fd, bool receive, std::size_t size)
{
    if (size == 0)
        return;
    const int option = receive ? SO_RCVBUF : SO_SNDBUF;
    const int want = int(std::min<std::size_t>(size, 1u << 30));
    setsockopt(fd, SOL_SOCKET, option, &want, sizeof(want));
    int got = socket_buffer_size(fd, option);
    if (got < want)
    {
        // Beyond net.core.rmem_max / wmem_max: allowed to a process with
        // CAP_NET_ADMIN (the reference does not try; a tuned sysctl is not
        // needed then).
        const int force = receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE;
        if (setsockopt(fd, SOL_SOCKET, force, &want, sizeof(want)) == 0)
        {
            got = socket_buffer_size(fd, option);
            if (got >= want)
                log_info("Socket %s buffer set to %d bytes with %s (beyond %s)",
                         receive ? "receive" : "send", want,
                         receive ? "SO_RCVBUFFORCE" : "SO_SNDBUFFORCE",
                         receive ? "net.core.rmem_max" : "net.core.wmem_max");
        }
    }
    if (got < want)
        log_warning("Socket %s buffer size was clipped to %d bytes (requested %d): raise %s "
                    "(e.g. sysctl %s=%d) to avoid packet loss",
                    receive ? "receive" : "send", got, want,
                    receive ? "net.core.rmem_max" : "net.core.wmem_max",
                    receive ? "net.core.rmem_max" : "net.core.wmem_max", want);
}

} // namespace spead2
