#include "transport/udp/udp_reader.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <fcntl.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/socket_util.h"
#include "common/thread_pool.h"

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

namespace spead2::transport
{

namespace
{

[[noreturn]] void fail(const std::string &what)
{
    throw std::system_error(errno, std::generic_category(), what);
}

} // anonymous namespace

int open_udp_socket(const udp_socket_spec &spec)
{
    if (spec.type == udp_socket_spec::kind::adopt)
    {
        // Ownership of spec.fd has passed to us: close it on failure.
        try
        {
            int type = 0;
            socklen_t len = sizeof(type);
            if (getsockopt(spec.fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
                fail("adopting socket");
            if (type != SOCK_DGRAM)
                throw std::invalid_argument("the socket is not a UDP (datagram) socket");
            sockaddr_storage addr{};
            len = sizeof(addr);
            if (getsockname(spec.fd, reinterpret_cast<sockaddr *>(&addr), &len) < 0)
                fail("adopting socket");
            if (addr.ss_family != AF_INET && addr.ss_family != AF_INET6)
                throw std::invalid_argument("the socket is not an IPv4 or IPv6 socket");
        }
        catch (...)
        {
            ::close(spec.fd);
            throw;
        }
        return spec.fd;
    }

    socklen_t addr_len = 0;
    sockaddr_storage addr;
    int family = AF_UNSPEC;
    if (spec.type == udp_socket_spec::kind::multicast_v4)
        family = AF_INET;
    else if (spec.type == udp_socket_spec::kind::multicast_v6)
        family = AF_INET6;
    try
    {
        addr = resolve_address(spec.host, spec.port, family, addr_len);
    }
    catch (std::runtime_error &)
    {
        if (family == AF_UNSPEC)
            throw;
        // An address of the other family: say which overload is needed.
        resolve_address(spec.host, spec.port, AF_UNSPEC, addr_len);   // rethrows if it does not resolve at all
        throw std::invalid_argument(spec.host + " is not an " + (family == AF_INET ? "IPv4" : "IPv6")
                                    + " address (use the " + (family == AF_INET ? "interface_index" : "interface_address")
                                    + " form for " + (family == AF_INET ? "IPv6" : "IPv4") + ")");
    }
    udp_socket_spec::kind type = spec.type;
    if (type == udp_socket_spec::kind::multicast_v4)
    {
        // The reference's IPv4 (group, interface_address) form: an unspecified
        // endpoint means "the interface address", and a unicast endpoint must
        // be the interface address itself.
        in_addr iface = resolve_ipv4(spec.interface_address.empty() ? "0.0.0.0" : spec.interface_address,
                                     "interface address");
        auto *sin = reinterpret_cast<sockaddr_in *>(&addr);
        if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
            sin->sin_addr = iface;
        if (!IN_MULTICAST(ntohl(sin->sin_addr.s_addr)))
        {
            if (sin->sin_addr.s_addr != iface.s_addr)
                throw std::invalid_argument("endpoint is not multicast and does not match interface address");
            type = udp_socket_spec::kind::unicast;
        }
    }
    const std::string where = (spec.host.empty() ? std::string("*") : spec.host) + ":" + std::to_string(spec.port);

    int fd = socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        fail("socket");
    try
    {
        set_socket_buffer(fd, true, spec.buffer_size);
        int one = 1;
        if (type == udp_socket_spec::kind::multicast_v4)
        {
            auto *sin = reinterpret_cast<sockaddr_in *>(&addr);
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            ip_mreq mreq{};
            mreq.imr_multiaddr = sin->sin_addr;
            if (!spec.interface_address.empty())
            {
                socklen_t il;
                auto iface = resolve_address(spec.interface_address, 0, AF_INET, il);
                mreq.imr_interface = reinterpret_cast<sockaddr_in *>(&iface)->sin_addr;
            }
            if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0)
                fail("joining multicast group " + spec.host + " on interface "
                     + (spec.interface_address.empty() ? "(default)" : spec.interface_address));
        }
        else if (type == udp_socket_spec::kind::multicast_v6)
        {
            auto *sin6 = reinterpret_cast<sockaddr_in6 *>(&addr);
            if (!IN6_IS_ADDR_MULTICAST(&sin6->sin6_addr))
                throw std::invalid_argument(spec.host + " is not an IPv6 multicast address");
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            ipv6_mreq mreq{};
            mreq.ipv6mr_multiaddr = sin6->sin6_addr;
            mreq.ipv6mr_interface = spec.interface_index;
            if (setsockopt(fd, IPPROTO_IPV6, IPV6_JOIN_GROUP, &mreq, sizeof(mreq)) < 0)
                fail("joining IPv6 multicast group " + spec.host);
        }
        else
        {
            // A unicast address that happens to be multicast: join on the default interface.
            if (addr.ss_family == AF_INET
                && IN_MULTICAST(ntohl(reinterpret_cast<sockaddr_in *>(&addr)->sin_addr.s_addr)))
            {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                ip_mreq mreq{};
                mreq.imr_multiaddr = reinterpret_cast<sockaddr_in *>(&addr)->sin_addr;
                if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0)
                    fail("joining multicast group " + spec.host);
            }
        }
        if (bind(fd, reinterpret_cast<sockaddr *>(&addr), addr_len) < 0)
            fail("binding UDP socket to " + where);
    }
    catch (...)
    {
        ::close(fd);
        throw;
    }
    return fd;
}

udp_reader::udp_reader(packet_sink &sink, worker &thread, const udp_socket_spec &spec, std::size_t max_size)
    : reader(sink, thread), fd(open_udp_socket(spec)), max_size(max_size)
{
    if (max_size == 0)
    {
        ::close(fd);
        throw std::invalid_argument("max_size must be positive");
    }
    int one = 1;
    if (spec.type == udp_socket_spec::kind::adopt)
    {
        // The reactor needs a non-blocking socket.
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        {
            ::close(fd);
            fail("making the adopted socket non-blocking");
        }
    }
    gro = setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    // One extra byte detects datagrams larger than max_size (they come back truncated).
    buffer_bytes = gro ? std::max(UDP_GRO_BUFFER, max_size + 1) : max_size + 1;
    // With GRO each message can hold up to 64 KiB of coalesced datagrams:
    // fewer of them keep the buffers cache-sized.
    n_msgs = gro ? UDP_GRO_MMSG_COUNT : UDP_MMSG_COUNT;
    storage.resize(n_msgs * buffer_bytes);
    msgs.resize(n_msgs);
    iovs.resize(n_msgs);
    control.resize(n_msgs * CMSG_SPACE(sizeof(int)));
}

udp_reader::~udp_reader()
{
    close();
}

void udp_reader::close()
{
    if (fd >= 0)
    {
        ::close(fd);
        fd = -1;
    }
}

void udp_reader::start()
{
    auto self = std::static_pointer_cast<udp_reader>(shared_from_this());
    thread.post([self] {
        if (self->stopping.load() || self->fd < 0)
            return;
        self->thread.add_fd(self->fd, [self] { self->on_readable(); });
        self->registered = true;
    });
}

void udp_reader::unregister()
{
    if (registered)
    {
        thread.remove_fd(fd);
        registered = false;
    }
}

void udp_reader::on_stop_requested()
{
    auto self = std::static_pointer_cast<udp_reader>(shared_from_this());
    thread.post([self] { self->unregister(); });
}

void udp_reader::on_readable()
{
    // Under load, going straight back to recvmmsg saves an epoll round trip
    // per batch; a few calls at most, so other readers on this thread get a turn.
    for (std::size_t call = 0; call < UDP_CALLS_PER_WAKEUP; call++)
    {
        if (stopping.load())
        {
            unregister();
            return;
        }
        if (!receive_batch())
            break;
    }
}

bool udp_reader::receive_batch()
{
    const std::size_t cspace = CMSG_SPACE(sizeof(int));
    for (std::size_t i = 0; i < n_msgs; i++)
    {
        iovs[i].iov_base = storage.data() + i * buffer_bytes;
        iovs[i].iov_len = buffer_bytes;
        std::memset(&msgs[i], 0, sizeof(msgs[i]));
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (gro)
        {
            msgs[i].msg_hdr.msg_control = control.data() + i * cspace;
            msgs[i].msg_hdr.msg_controllen = cspace;
        }
    }
    int n = recvmmsg(fd, msgs.data(), unsigned(n_msgs), MSG_DONTWAIT, nullptr);
    if (n < 0)
    {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            log_warning("recvmmsg failed: %s", std::strerror(errno));
        return false;
    }
    batch b(sink);
    if (!b.active())
    {
        unregister();
        return false;
    }
    protocol::packet_header group[PACKET_GROUP];
    std::size_t ng = 0;
    std::size_t bad = 0;
    auto add_datagram = [&](const std::uint8_t *data, std::size_t size) -> bool {
        if (size > max_size)
        {
            log_debug("dropped packet due to truncation (%zu bytes > max_size %zu)", size, max_size);
            bad++;
            return true;
        }
        if (!protocol::decode_datagram(group[ng], data, size))
        {
            bad++;
            return true;
        }
        if (++ng == PACKET_GROUP)
        {
            ng = 0;
            return b.add(group, PACKET_GROUP);
        }
        return true;
    };
    bool running = true;
    for (int i = 0; i < n && running; i++)
    {
        const auto *data = static_cast<const std::uint8_t *>(iovs[i].iov_base);
        std::size_t len = msgs[i].msg_len;
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
        {
            log_debug("dropped packet due to truncation (datagram larger than the buffer)");
            bad++;
            continue;
        }
        std::size_t seg = 0;
        if (gro)
        {
            for (cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
                if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO)
                {
                    int s;
                    std::memcpy(&s, CMSG_DATA(c), sizeof(s));
                    seg = std::size_t(s);
                }
        }
        if (seg == 0 || seg >= len)
            running = add_datagram(data, len);
        else
            for (std::size_t off = 0; off < len && running; off += seg)
                running = add_datagram(data + off, std::min(seg, len - off));
    }
    if (running && ng)
        running = b.add(group, ng);
    if (bad)
        b.malformed(bad);
    return running && std::size_t(n) == n_msgs;   // a full call: more is probably waiting
}

} // namespace spead2::transport
