#include "protocol/frame.h"

#include <cstring>

#include "protocol/spead.h"

namespace spead2::protocol
{

const char *describe(frame_status status)
{
    switch (status)
    {
    case frame_status::ok: return "ok";
    case frame_status::truncated: return "frame is truncated";
    case frame_status::not_ipv4: return "frame is not IPv4";
    case frame_status::bad_ipv4: return "invalid IPv4 header";
    case frame_status::fragment: return "IPv4 fragment";
    case frame_status::not_udp: return "IP protocol is not UDP";
    case frame_status::bad_udp: return "invalid UDP length";
    }
    return "unknown";
}

frame_status decode_ipv4_udp(udp_frame &out, const std::uint8_t *data, std::size_t size)
{
    if (size < IPV4_MIN_HEADER_SIZE)
        return frame_status::truncated;
    if ((data[0] >> 4) != 4)
        return frame_status::not_ipv4;
    const std::size_t ihl = std::size_t(data[0] & 0x0f) * 4;
    const std::size_t total_length = load_be16(data + 2);
    if (ihl < IPV4_MIN_HEADER_SIZE || total_length < ihl)
        return frame_status::bad_ipv4;
    if (total_length > size)
        return frame_status::truncated;
    const std::uint16_t flags_fragment = load_be16(data + 6);
    if (flags_fragment & 0x3fff)  // more-fragments flag or a fragment offset
        return frame_status::fragment;
    if (data[9] != IPPROTO_UDP_NUMBER)
        return frame_status::not_udp;
    const std::uint8_t *udp = data + ihl;
    const std::size_t ip_payload = total_length - ihl;
    if (ip_payload < UDP_HEADER_SIZE)
        return frame_status::truncated;
    const std::size_t udp_length = load_be16(udp + 4);
    if (udp_length < UDP_HEADER_SIZE || udp_length > ip_payload)
        return frame_status::bad_udp;
    out.src_ip = load_be32(data + 12);
    out.dst_ip = load_be32(data + 16);
    out.src_port = load_be16(udp);
    out.dst_port = load_be16(udp + 2);
    out.payload = udp + UDP_HEADER_SIZE;
    out.payload_size = udp_length - UDP_HEADER_SIZE;
    return frame_status::ok;
}

namespace
{

// Skip 802.1Q / QinQ tags starting at the ethertype at data[pos].
frame_status after_ethertype(udp_frame &out, const std::uint8_t *data, std::size_t size, std::size_t pos)
{
    for (;;)
    {
        if (pos + 2 > size)
            return frame_status::truncated;
        const std::uint16_t ethertype = load_be16(data + pos);
        if (ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ || ethertype == ETHERTYPE_QINQ_OLD)
        {
            pos += VLAN_TAG_SIZE;  // 2 bytes TCI, then the next ethertype
            continue;
        }
        if (ethertype != ETHERTYPE_IPV4)
            return frame_status::not_ipv4;
        pos += 2;
        return decode_ipv4_udp(out, data + pos, size - pos);
    }
}

// Offset of the IPv4 header after the ethertype at data[pos], or 0 if the
// frame is not IPv4 (or too short to tell).
std::size_t ipv4_start(const std::uint8_t *data, std::size_t size, std::size_t pos)
{
    for (;;)
    {
        if (pos + 2 > size)
            return 0;
        const std::uint16_t ethertype = load_be16(data + pos);
        if (ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ || ethertype == ETHERTYPE_QINQ_OLD)
        {
            pos += VLAN_TAG_SIZE;
            continue;
        }
        return ethertype == ETHERTYPE_IPV4 ? pos + 2 : 0;
    }
}

} // anonymous namespace

bool passes_udp_filter(link_type link, const std::uint8_t *data, std::size_t size)
{
    std::size_t ip = 0;
    switch (link)
    {
    case link_type::ethernet:
        ip = ipv4_start(data, size, 12);
        break;
    case link_type::linux_sll:
        ip = ipv4_start(data, size, 14);
        break;
    case link_type::linux_sll2:
        if (size < SLL2_HEADER_SIZE)
            return false;
        {
            const std::uint16_t protocol = load_be16(data);
            if (protocol == ETHERTYPE_IPV4)
                ip = SLL2_HEADER_SIZE;
            else if (protocol == ETHERTYPE_VLAN || protocol == ETHERTYPE_QINQ || protocol == ETHERTYPE_QINQ_OLD)
                ip = ipv4_start(data, size, SLL2_HEADER_SIZE + 2);   // as decode_frame
            else
                return false;
        }
        break;
    case link_type::raw_ipv4:
        if (size < 1 || (data[0] >> 4) != 4)
            return false;
        ip = 0;
        break;
    }
    if (link != link_type::raw_ipv4 && ip == 0)
        return false;
    if (ip + 10 > size)
        return false;   // BPF rejects a frame too short for the fields it reads
    return data[ip + 9] == IPPROTO_UDP_NUMBER && (load_be16(data + ip + 6) & 0x3fff) == 0;
}

frame_status decode_frame(udp_frame &out, link_type link, const std::uint8_t *data, std::size_t size)
{
    switch (link)
    {
    case link_type::ethernet:
        // dst MAC (6), src MAC (6), then the ethertype
        return after_ethertype(out, data, size, 12);
    case link_type::linux_sll:
        // packet type, ARPHRD, address length, address (8), then the protocol
        return after_ethertype(out, data, size, 14);
    case link_type::linux_sll2:
        // protocol type comes first, then reserved, ifindex, ARPHRD, type, addr
        if (size < SLL2_HEADER_SIZE)
            return frame_status::truncated;
        {
            const std::uint16_t protocol = load_be16(data);
            if (protocol != ETHERTYPE_IPV4)
            {
                if (protocol == ETHERTYPE_VLAN || protocol == ETHERTYPE_QINQ || protocol == ETHERTYPE_QINQ_OLD)
                    return after_ethertype(out, data, size, SLL2_HEADER_SIZE + 2);
                return frame_status::not_ipv4;
            }
        }
        return decode_ipv4_udp(out, data + SLL2_HEADER_SIZE, size - SLL2_HEADER_SIZE);
    case link_type::raw_ipv4:
        return decode_ipv4_udp(out, data, size);
    }
    return frame_status::not_ipv4;
}

void multicast_mac(std::uint8_t mac[6], std::uint32_t group)
{
    mac[0] = 0x01;
    mac[1] = 0x00;
    mac[2] = 0x5e;
    mac[3] = std::uint8_t((group >> 16) & 0x7f);
    mac[4] = std::uint8_t(group >> 8);
    mac[5] = std::uint8_t(group);
}

void write_eth_ipv4_udp(std::uint8_t *out, const frame_endpoints &ends, std::uint8_t ttl)
{
    std::memset(out, 0, ETH_IPV4_UDP_HEADERS);
    std::memcpy(out, ends.dst_mac, 6);
    std::memcpy(out + 6, ends.src_mac, 6);
    store_be16(out + 12, ETHERTYPE_IPV4);
    std::uint8_t *ip = out + ETHERNET_HEADER_SIZE;
    ip[0] = 0x45;                  // version 4, 5 words of header
    store_be16(ip + 6, 0x4000);    // don't fragment
    ip[8] = ttl;
    ip[9] = IPPROTO_UDP_NUMBER;
    store_be32(ip + 12, ends.src_ip);
    store_be32(ip + 16, ends.dst_ip);
    std::uint8_t *udp = ip + IPV4_MIN_HEADER_SIZE;
    store_be16(udp, ends.src_port);
    store_be16(udp + 2, ends.dst_port);
}

void finish_eth_ipv4_udp(std::uint8_t *out, std::size_t payload, std::uint16_t ip_id)
{
    std::uint8_t *ip = out + ETHERNET_HEADER_SIZE;
    const std::size_t udp_length = UDP_HEADER_SIZE + payload;
    store_be16(ip + 2, std::uint16_t(IPV4_MIN_HEADER_SIZE + udp_length));
    store_be16(ip + 4, ip_id);
    store_be16(ip + 10, 0);
    std::uint32_t sum = 0;
    for (std::size_t i = 0; i < IPV4_MIN_HEADER_SIZE; i += 2)
        sum += std::uint32_t((ip[i] << 8) | ip[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    store_be16(ip + 10, std::uint16_t(~sum));
    store_be16(ip + IPV4_MIN_HEADER_SIZE + 4, std::uint16_t(udp_length));
}

} // namespace spead2::protocol
