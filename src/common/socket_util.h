// Small socket helpers shared by the UDP, ibverbs and send transports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <netinet/in.h>
#include <sys/socket.h>

namespace spead2
{

/// Resolve @a host (empty = wildcard) and @a port for a datagram socket;
/// @a family AF_INET, AF_INET6 or AF_UNSPEC.  Throws std::runtime_error
/// ("Host not found: ...", RuntimeError in Python, as in the reference).
sockaddr_storage resolve_address(const std::string &host, std::uint16_t port, int family, socklen_t &length);

/// Resolve to one IPv4 address; @a what names the argument in the error
/// (std::invalid_argument: an argument that is not an IPv4 address).
in_addr resolve_ipv4(const std::string &host, const char *what);

/// Set SO_RCVBUF (@a receive) or SO_SNDBUF to @a size bytes (0: leave the
/// default).  When net.core.rmem_max / wmem_max would clip it, tries
/// SO_RCVBUFFORCE / SO_SNDBUFFORCE (needs CAP_NET_ADMIN); logs a warning
/// naming the sysctl when the buffer still ends up smaller.
void set_socket_buffer(int fd, bool receive, std::size_t size);

} // namespace spead2
