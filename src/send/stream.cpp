#include "send/stream.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/socket_util.h"
#include "protocol/frame.h"
#include "transport/mem/mem_reader.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

namespace spead2::send
{

// ------------------------------------------------------------------- config

stream_config &stream_config::set_max_packet_size(std::size_t v)
{
    if (v < MIN_PACKET_SIZE)
        throw std::invalid_argument("max_packet_size must be at least " + std::to_string(MIN_PACKET_SIZE));
    if (v > 65507)
        throw std::invalid_argument("max_packet_size cannot exceed 65507 (the largest UDP payload)");
    max_packet_size = v;
    return *this;
}

stream_config &stream_config::set_rate(double v)
{
    if (!(v >= 0.0) || !std::isfinite(v))
        throw std::invalid_argument("rate must be a finite non-negative number of bytes per second");
    rate = v;
    return *this;
}

stream_config &stream_config::set_max_heaps(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("max_heaps must be positive");
    max_heaps = v;
    return *this;
}

stream_config &stream_config::set_burst_rate_ratio(double v)
{
    if (!(v >= 1.0) || !std::isfinite(v))
        throw std::invalid_argument("burst rate ratio must be at least 1.0 and finite");
    burst_rate_ratio = v;
    return *this;
}

// ------------------------------------------------------------------- stream

stream::stream(const stream_config &config) : stream(config, false)
{
}

stream::stream(const stream_config &config, bool gather)
    : config(config),
      gather(gather),
      buffer(SEND_BATCH_PACKETS * config.get_max_packet_size()),
      sizes(SEND_BATCH_PACKETS),
      substreams(SEND_BATCH_PACKETS),
      rate_pacer(real_clock, config.get_burst_size(), config.get_burst_rate_ratio())
{
}

void stream::set_cnt_sequence(std::int64_t next, std::int64_t step)
{
    if (step == 0)
        throw std::invalid_argument("step cannot be 0");
    std::lock_guard<std::mutex> lock(mutex);
    next_cnt = next;
    cnt_step = step;
}

void stream::set_clock(clock_source *c)
{
    std::lock_guard<std::mutex> lock(mutex);
    clock = c ? c : &real_clock;
    rate_pacer.set_clock(*clock);
}

void stream::reserve(std::size_t n)
{
    std::lock_guard<std::mutex> lock(flight_mutex);
    if (in_flight + n > config.get_max_heaps())
    {
        log_warning("async_send_heap(s): dropping heap because queue is full");
        throw send_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                         "more than max_heaps (" + std::to_string(config.get_max_heaps())
                         + ") heaps would be in flight");
    }
    in_flight += n;
}

void stream::release(std::size_t n)
{
    std::lock_guard<std::mutex> lock(flight_mutex);
    in_flight -= std::min(n, in_flight);
}

std::size_t stream::send_heap(const heap &h, std::int64_t cnt, std::size_t substream, double rate)
{
    heap_reference ref;
    ref.h = &h;
    ref.cnt = cnt;
    ref.substream_index = substream;
    ref.rate = rate;
    return send_heaps(&ref, 1, group_mode::serial);
}

namespace
{

[[noreturn]] void invalid_group(const char *log, const std::string &message)
{
    log_warning("%s", log);
    throw send_error(std::make_error_code(std::errc::invalid_argument), message);
}

std::uint64_t cnt_mask(int heap_address_bits)
{
    return heap_address_bits >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << heap_address_bits) - 1;
}

} // anonymous namespace

std::size_t stream::send_heaps(const heap_reference *refs, std::size_t n, group_mode mode, bool reserved)
{
    struct release_guard
    {
        stream &s;
        std::size_t n;
        ~release_guard() { s.release(n); }
    };
    if (!reserved)
        reserve(n);
    release_guard guard{*this, n};

    if (n == 0)
        invalid_group("Empty heap group", "send_heaps: the group of heaps is empty");
    for (std::size_t i = 0; i < n; i++)
        if (refs[i].substream_index >= num_substreams())
            invalid_group("async_send_heap(s): dropping heap because substream index is out of range",
                          "substream_index " + std::to_string(refs[i].substream_index)
                          + " is out of range (the stream has " + std::to_string(num_substreams())
                          + " substreams)");

    std::lock_guard<std::mutex> lock(mutex);
    // Heap cnts: explicit ones must fit in the heap's flavour; automatic ones
    // come from the sequence (masked to the flavour, as the reference does),
    // which only advances when the group is accepted.
    std::int64_t next = next_cnt;
    generators.clear();
    rates.clear();
    for (std::size_t i = 0; i < n; i++)
    {
        const heap &h = *refs[i].h;
        const std::uint64_t mask = cnt_mask(h.get_heap_address_bits());
        std::uint64_t cnt;
        if (refs[i].cnt < 0)
        {
            cnt = std::uint64_t(next) & mask;
            next += cnt_step;
        }
        else
        {
            cnt = std::uint64_t(refs[i].cnt);
            if (cnt & ~mask)
                invalid_group("async_send_heap(s): dropping heap because cnt is out of range",
                              "heap cnt " + std::to_string(cnt) + " does not fit in "
                              + std::to_string(h.get_heap_address_bits()) + " bits");
        }
        generators.emplace_back(h, std::int64_t(cnt), config.get_max_packet_size());
        rates.push_back(refs[i].rate < 0.0 ? config.get_rate() : refs[i].rate);
    }
    next_cnt = next;

    bool paced = false;
    for (double r : rates)
        paced |= r > 0.0;
    const std::size_t max_packet = config.get_max_packet_size();
    // With pacing, a batch never spans more than one burst.
    const std::size_t max_batch_bytes = paced ? std::max(config.get_burst_size(), max_packet) : buffer.size();
    if (paced)
        rate_pacer.begin();

    active.clear();
    for (std::size_t i = 0; i < n; i++)
        active.push_back(i);
    std::size_t turn = 0;   // position in active of the heap whose packet is next
    std::size_t total = 0;
    while (!active.empty())
    {
        std::size_t count = 0, used = 0, header_used = 0;
        iov.clear();
        gathered.clear();
        while (!active.empty() && count < SEND_BATCH_PACKETS && used + max_packet <= buffer.size()
               && (count == 0 || used + max_packet <= max_batch_bytes)
               && !(paced && rate_pacer.burst_full()))
        {
            const std::size_t idx = active[turn];
            packet_generator &gen = generators[idx];
            std::size_t size;
            if (gather)
            {
                // The header goes to the scratch buffer; the payload stays where it is.
                payload_scratch.clear();
                const std::size_t header = gen.next_packet_parts(buffer.data() + header_used, payload_scratch);
                gathered_packet gp{iov.size(), 1 + payload_scratch.size(), header, refs[idx].substream_index};
                iov.push_back(iovec{buffer.data() + header_used, header});
                for (const iovec &piece : payload_scratch)
                {
                    iov.push_back(piece);
                    gp.size += piece.iov_len;
                }
                gathered.push_back(gp);
                size = gp.size;
                header_used += header;
            }
            else
                size = gen.next_packet(buffer.data() + used);
            sizes[count] = size;
            substreams[count] = refs[idx].substream_index;
            if (paced)
                rate_pacer.add(size, rates[idx]);
            used += size;
            count++;
            if (!gen.has_next())
                active.erase(active.begin() + std::ptrdiff_t(turn));
            else if (mode == group_mode::round_robin)
                turn++;
            if (turn >= active.size())
                turn = 0;
        }
        if (gather)
            transmit_gathered(iov.data(), gathered.data(), count);
        else
            transmit(buffer.data(), sizes.data(), substreams.data(), count);
        if (paced)
            rate_pacer.end_batch();
        total += used;
    }
    end_of_group();
    return total;
}

void stream::transmit_gathered(const iovec *iov, const gathered_packet *packets, std::size_t n)
{
    // A transport that asked for parts but does not take them: flatten.
    std::vector<std::uint8_t> flat;
    std::vector<std::size_t> flat_sizes(n), flat_subs(n);
    for (std::size_t i = 0; i < n; i++)
    {
        for (std::size_t j = 0; j < packets[i].n_iov; j++)
        {
            const auto *p = static_cast<const std::uint8_t *>(iov[packets[i].first + j].iov_base);
            flat.insert(flat.end(), p, p + iov[packets[i].first + j].iov_len);
        }
        flat_sizes[i] = packets[i].size;
        flat_subs[i] = packets[i].substream;
    }
    transmit(flat.data(), flat_sizes.data(), flat_subs.data(), n);
}

// ------------------------------------------------------------- bytes_stream

namespace
{

// One buffer kept from the last destroyed bytes_stream (see stream.h).
std::mutex bytes_cache_mutex;
std::vector<std::uint8_t> bytes_cache;

} // anonymous namespace

bytes_stream::bytes_stream(const stream_config &config) : stream(config)
{
    std::lock_guard<std::mutex> lock(bytes_cache_mutex);
    data.swap(bytes_cache);
    data.clear();
}

bytes_stream::~bytes_stream()
{
    if (data.capacity() == 0 || data.capacity() > BYTES_STREAM_CACHE_LIMIT)
        return;
    std::lock_guard<std::mutex> lock(bytes_cache_mutex);
    if (data.capacity() > bytes_cache.capacity())
        data.swap(bytes_cache);
}

void bytes_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *, std::size_t n)
{
    std::size_t total = 0;
    for (std::size_t i = 0; i < n; i++)
        total += sizes[i];
    data.insert(data.end(), d, d + total);
}

// ------------------------------------------------------------ inproc_stream

inproc_stream::inproc_stream(const stream_config &config,
                             std::vector<std::shared_ptr<transport::inproc_queue>> queues)
    : stream(config), queues(std::move(queues))
{
    if (this->queues.empty())
        throw std::invalid_argument("at least one queue is required");
    for (const auto &q : this->queues)
        if (!q)
            throw std::invalid_argument("queues must not be None");
}

void inproc_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                             std::size_t n)
{
    for (std::size_t i = 0; i < n; i++)
    {
        queues[subs[i]]->add_packet(d, sizes[i]);
        d += sizes[i];
    }
}

// --------------------------------------------------------------- udp_stream

udp_endpoint resolve_ipv4(const std::string &host, std::uint16_t port)
{
    udp_endpoint ep;
    ep.address = ntohl(spead2::resolve_ipv4(host, "host").s_addr);
    ep.port = port;
    return ep;
}

namespace
{

bool is_multicast(std::uint32_t address) { return (address >> 28) == 0xe; }

// Largest UDP payload that GSO may produce in one call (IPv4 total length limit).
constexpr std::size_t GSO_MAX_BYTES = 65507;
constexpr std::size_t GSO_MAX_SEGMENTS = 64;

[[noreturn]] void throw_errno(const std::string &what)
{
    throw std::system_error(errno, std::generic_category(), what);
}

void set_option(int fd, int level, int name, const void *value, socklen_t length)
{
    if (setsockopt(fd, level, name, value, length) < 0)
        throw_errno("set_option");
}

void check_hops(int ttl)
{
    if (ttl < 0 || ttl > 255)
        throw std::out_of_range("multicast hops value out of range");
}

} // anonymous namespace

void wait_writable(int fd)
{
    pollfd p{fd, POLLOUT, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR)
    {
    }
}

namespace
{

/// Closes the descriptor unless released.
struct fd_guard
{
    int fd;
    ~fd_guard() { if (fd >= 0) ::close(fd); }
    int release() { int f = fd; fd = -1; return f; }
};

} // anonymous namespace

bool socket_endpoint::is_multicast() const
{
    if (family() == AF_INET)
    {
        const auto *sa = reinterpret_cast<const sockaddr_in *>(&address);
        return spead2::send::is_multicast(ntohl(sa->sin_addr.s_addr));
    }
    if (family() == AF_INET6)
    {
        const auto *sa = reinterpret_cast<const sockaddr_in6 *>(&address);
        return IN6_IS_ADDR_MULTICAST(&sa->sin6_addr);
    }
    return false;
}

socket_endpoint resolve_endpoint(const std::string &host, std::uint16_t port)
{
    socket_endpoint ep;
    ep.address = resolve_address(host, port, AF_UNSPEC, ep.length);
    return ep;
}

udp_stream::udp_stream(const stream_config &config, std::vector<socket_endpoint> endpoints,
                       const udp_socket_options &options)
    : stream(config), endpoints(std::move(endpoints)), gso(options.allow_gso)
{
    using kind = udp_socket_options::kind;
    fd_guard guard{options.type == kind::adopt ? options.fd : -1};
    int family;
    if (options.type == kind::adopt)
    {
        // An empty endpoint list is allowed here (no substreams), as in the reference.
        sockaddr_storage local{};
        socklen_t length = sizeof(local);
        if (getsockname(guard.fd, reinterpret_cast<sockaddr *>(&local), &length) < 0)
            throw_errno("getsockname");
        family = local.ss_family;
    }
    else
    {
        if (this->endpoints.empty())
            throw std::invalid_argument("Endpoint list must be non-empty");
        family = this->endpoints[0].family();
    }
    for (const auto &ep : this->endpoints)
        if (ep.family() != family)
            throw std::invalid_argument("Endpoint does not match protocol of the socket");
    // The form's requirements on the endpoints and interface come before
    // any socket is made.
    in_addr iface_v4{};
    switch (options.type)
    {
    case kind::multicast:
        for (const auto &ep : this->endpoints)
            if (!ep.is_multicast())
                throw std::invalid_argument("endpoint is not a multicast address");
        check_hops(options.ttl);
        break;
    case kind::multicast_v4:
    {
        for (const auto &ep : this->endpoints)
            if (ep.family() != AF_INET || !ep.is_multicast())
                throw std::invalid_argument("endpoint is not an IPv4 multicast address");
        socklen_t length;
        sockaddr_storage sa = resolve_address(options.interface_address, 0, AF_UNSPEC, length);
        if (sa.ss_family != AF_INET)
            throw std::invalid_argument("interface address is not an IPv4 address");
        iface_v4 = reinterpret_cast<const sockaddr_in *>(&sa)->sin_addr;
        check_hops(options.ttl);
        break;
    }
    case kind::multicast_v6:
        for (const auto &ep : this->endpoints)
            if (ep.family() != AF_INET6 || !ep.is_multicast())
                throw std::invalid_argument("endpoint is not an IPv6 multicast address");
        check_hops(options.ttl);
        break;
    default:
        break;
    }

    if (options.type != kind::adopt)
    {
        guard.fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (guard.fd < 0)
            throw_errno("socket");
        set_socket_buffer(guard.fd, false, options.buffer_size);
    }
    const int hops = options.ttl;
    switch (options.type)
    {
    case kind::plain:
        if (!options.interface_address.empty())
        {
            socket_endpoint local = resolve_endpoint(options.interface_address, 0);
            if (bind(guard.fd, reinterpret_cast<const sockaddr *>(&local.address), local.length) < 0)
                throw_errno("bind");
        }
        break;
    case kind::multicast:
        if (family == AF_INET)
            set_option(guard.fd, IPPROTO_IP, IP_MULTICAST_TTL, &hops, sizeof(hops));
        else
            set_option(guard.fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof(hops));
        break;
    case kind::multicast_v4:
        set_option(guard.fd, IPPROTO_IP, IP_MULTICAST_TTL, &hops, sizeof(hops));
        set_option(guard.fd, IPPROTO_IP, IP_MULTICAST_IF, &iface_v4, sizeof(iface_v4));
        break;
    case kind::multicast_v6:
    {
        set_option(guard.fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof(hops));
        unsigned int index = options.interface_index;
        set_option(guard.fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &index, sizeof(index));
        break;
    }
    case kind::adopt:
        break;
    }
    fd = guard.release();
}

udp_stream::~udp_stream()
{
    if (fd >= 0)
        close(fd);
}

void udp_stream::send_plain(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                            std::size_t n)
{
    mmsghdr msgs[SEND_BATCH_PACKETS];
    iovec iov[SEND_BATCH_PACKETS];
    std::memset(msgs, 0, sizeof(msgs[0]) * n);
    for (std::size_t i = 0; i < n; i++)
    {
        iov[i].iov_base = const_cast<std::uint8_t *>(d);
        iov[i].iov_len = sizes[i];
        d += sizes[i];
        msgs[i].msg_hdr.msg_name = &endpoints[subs[i]].address;
        msgs[i].msg_hdr.msg_namelen = endpoints[subs[i]].length;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    std::size_t sent = 0;
    while (sent < n)
    {
        int r = sendmmsg(fd, msgs + sent, unsigned(n - sent), 0);
        if (r < 0)
        {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
            {
                wait_writable(fd);   // an adopted socket may be non-blocking
                continue;
            }
            // Packets that cannot be sent are lost, as on a real network; say so.
            log_warning("sendmmsg failed: %s (%zu packets dropped)", std::strerror(errno), n - sent);
            return;
        }
        sent += std::size_t(r);
    }
}

bool udp_stream::send_gso(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                          std::size_t n)
{
    // Group runs of equal-sized packets to one destination (the last of a run
    // may be shorter) into GSO super-datagrams, and send all of them with one
    // sendmmsg.
    mmsghdr msgs[SEND_BATCH_PACKETS];
    iovec iov[SEND_BATCH_PACKETS];
    alignas(cmsghdr) char control[SEND_BATCH_PACKETS][CMSG_SPACE(sizeof(std::uint16_t))];
    std::size_t n_msgs = 0;
    std::size_t i = 0;
    while (i < n)
    {
        const std::size_t seg = sizes[i];
        std::size_t j = i, bytes = 0;
        while (j < n && j - i < GSO_MAX_SEGMENTS && bytes + sizes[j] <= GSO_MAX_BYTES)
        {
            if (sizes[j] > seg || subs[j] != subs[i])
                break;
            bytes += sizes[j];
            j++;
            if (sizes[j - 1] < seg)
                break;   // a short segment must be the last one
        }
        mmsghdr &m = msgs[n_msgs];
        std::memset(&m, 0, sizeof(m));
        iov[n_msgs].iov_base = const_cast<std::uint8_t *>(d);
        iov[n_msgs].iov_len = bytes;
        m.msg_hdr.msg_name = &endpoints[subs[i]].address;
        m.msg_hdr.msg_namelen = endpoints[subs[i]].length;
        m.msg_hdr.msg_iov = &iov[n_msgs];
        m.msg_hdr.msg_iovlen = 1;
        if (j - i > 1)
        {
            m.msg_hdr.msg_control = control[n_msgs];
            m.msg_hdr.msg_controllen = CMSG_SPACE(sizeof(std::uint16_t));
            cmsghdr *c = CMSG_FIRSTHDR(&m.msg_hdr);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(std::uint16_t));
            std::uint16_t s = std::uint16_t(seg);
            std::memcpy(CMSG_DATA(c), &s, sizeof(s));
        }
        d += bytes;
        n_msgs++;
        i = j;
    }
    std::size_t sent = 0;
    while (sent < n_msgs)
    {
        int r = sendmmsg(fd, msgs + sent, unsigned(n_msgs - sent), 0);
        if (r < 0)
        {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
            {
                wait_writable(fd);
                continue;
            }
            if (sent == 0 && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT || errno == EOPNOTSUPP))
                return false;   // GSO not usable here: caller falls back
            log_warning("sendmmsg failed: %s (some packets dropped)", std::strerror(errno));
            return true;
        }
        sent += std::size_t(r);
    }
    return true;
}

void udp_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                          std::size_t n)
{
    if (gso)
    {
        if (send_gso(d, sizes, subs, n))
            return;
        log_info("UDP GSO is not available; sending one datagram per packet");
        gso = false;
    }
    send_plain(d, sizes, subs, n);
}

// -------------------------------------------------------------- pcap_stream

namespace
{

constexpr std::uint32_t PCAP_MAGIC_NS = 0xa1b23c4d;
constexpr std::uint32_t LINKTYPE_ETHERNET = 1;
constexpr std::uint32_t PCAP_SNAPLEN = 262144;
constexpr std::uint8_t PCAP_TTL = 64;

/// The Ethernet address a pcap record shows for @a address (host byte
/// order): a group's multicast MAC for a multicast destination, otherwise a
/// locally administered address made from the IPv4 address.
void mac_for(std::uint8_t *mac, std::uint32_t address, bool source)
{
    if (!source && is_multicast(address))
        protocol::multicast_mac(mac, address);
    else
    {
        mac[0] = 0x02;
        mac[1] = 0x00;
        protocol::store_be32(mac + 2, address);
    }
}

} // anonymous namespace

pcap_stream::pcap_stream(const stream_config &config, const std::string &filename,
                         std::vector<udp_endpoint> endpoints, udp_endpoint source)
    : stream(config), endpoints(std::move(endpoints)), source(source)
{
    if (this->endpoints.empty())
        throw std::invalid_argument("endpoints is empty");
    file = std::fopen(filename.c_str(), "wb");
    if (!file)
        throw std::system_error(errno, std::generic_category(), "cannot open " + filename + " for writing");
    std::uint32_t header[6] = {PCAP_MAGIC_NS, 0x00040002, 0, 0, PCAP_SNAPLEN, LINKTYPE_ETHERNET};
    // magic; version 2.4 (two uint16 in host order); thiszone; sigfigs; snaplen; linktype
    std::uint16_t version[2] = {2, 4};
    std::memcpy(&header[1], version, sizeof(version));
    if (std::fwrite(header, sizeof(header), 1, file) != 1)
    {
        std::fclose(file);
        throw std::system_error(errno, std::generic_category(), "writing " + filename);
    }
}

pcap_stream::~pcap_stream()
{
    if (file)
        std::fclose(file);
}

void pcap_stream::flush()
{
    if (file)
        std::fflush(file);
}

void pcap_stream::transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *subs,
                           std::size_t n)
{
    timespec ts = get_clock().wall_time();
    for (std::size_t i = 0; i < n; i++)
    {
        const udp_endpoint &dst = endpoints[subs[i]];
        const std::size_t payload = sizes[i];
        const std::size_t frame = protocol::ETH_IPV4_UDP_HEADERS + payload;
        std::uint32_t record[4] = {std::uint32_t(ts.tv_sec), std::uint32_t(ts.tv_nsec),
                                   std::uint32_t(frame), std::uint32_t(frame)};
        protocol::frame_endpoints ends;
        mac_for(ends.dst_mac, dst.address, false);
        mac_for(ends.src_mac, source.address, true);
        ends.src_ip = source.address;
        ends.dst_ip = dst.address;
        ends.src_port = source.port;
        ends.dst_port = dst.port;
        std::uint8_t h[protocol::ETH_IPV4_UDP_HEADERS];
        protocol::write_eth_ipv4_udp(h, ends, PCAP_TTL);
        protocol::finish_eth_ipv4_udp(h, payload, ip_id++);
        if (std::fwrite(record, sizeof(record), 1, file) != 1 || std::fwrite(h, sizeof(h), 1, file) != 1
            || std::fwrite(d, payload, 1, file) != 1)
            throw std::system_error(errno, std::generic_category(), "writing pcap file");
        d += payload;
        ts.tv_nsec += 1;   // keep timestamps strictly increasing within a batch
        if (ts.tv_nsec >= 1000000000) { ts.tv_nsec = 0; ts.tv_sec++; }
    }
}

} // namespace spead2::send
