// Frames for frame-level transports (pcap, ibverbs): decoding finds the UDP
// payload inside a link-layer frame; building writes the Ethernet, IPv4 and
// UDP headers a sender puts in front of a datagram.
//
// Supported link layers: Ethernet II (with any number of 802.1Q / 802.1ad /
// QinQ tags, which are skipped), Linux cooked capture v1 (SLL) and v2 (SLL2),
// and raw IPv4.  Only unfragmented IPv4 UDP is accepted; the IPv4 header
// length (IHL), IPv4 total length and UDP length are honoured, so link-layer
// padding never reaches the SPEAD decoder.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spead2::protocol
{

enum class link_type
{
    ethernet,    ///< DLT_EN10MB (1)
    linux_sll,   ///< DLT_LINUX_SLL (113)
    linux_sll2,  ///< DLT_LINUX_SLL2 (276)
    raw_ipv4,    ///< DLT_RAW (101) / LINKTYPE_IPV4 (228)
};

constexpr std::size_t ETHERNET_HEADER_SIZE = 14;
constexpr std::size_t VLAN_TAG_SIZE = 4;
constexpr std::size_t SLL_HEADER_SIZE = 16;
constexpr std::size_t SLL2_HEADER_SIZE = 20;
constexpr std::size_t IPV4_MIN_HEADER_SIZE = 20;
constexpr std::size_t UDP_HEADER_SIZE = 8;
constexpr std::uint16_t ETHERTYPE_IPV4 = 0x0800;
constexpr std::uint16_t ETHERTYPE_VLAN = 0x8100;     // 802.1Q
constexpr std::uint16_t ETHERTYPE_QINQ = 0x88a8;     // 802.1ad service tag
constexpr std::uint16_t ETHERTYPE_QINQ_OLD = 0x9100; // pre-standard QinQ
constexpr std::uint8_t IPPROTO_UDP_NUMBER = 17;

enum class frame_status
{
    ok,
    truncated,        ///< frame ends inside a header
    not_ipv4,         ///< ethertype / protocol is not IPv4
    bad_ipv4,         ///< IPv4 version or header length invalid, or total length exceeds frame
    fragment,         ///< IPv4 fragment (more-fragments bit or non-zero offset)
    not_udp,          ///< IP protocol is not UDP
    bad_udp,          ///< UDP length smaller than its header or larger than the IP payload
};

const char *describe(frame_status status);

/// The UDP datagram found in a frame.
struct udp_frame
{
    const std::uint8_t *payload = nullptr;
    std::size_t payload_size = 0;
    std::uint32_t src_ip = 0;   ///< host byte order
    std::uint32_t dst_ip = 0;   ///< host byte order
    std::uint16_t src_port = 0;
    std::uint16_t dst_port = 0;
};

/// Decode a frame of the given link type.  Returns frame_status::ok and fills
/// @a out if it holds an unfragmented IPv4 UDP datagram.
frame_status decode_frame(udp_frame &out, link_type link, const std::uint8_t *data, std::size_t size);

/// Whether a frame is one that the reference's capture filter
/// ("ip proto \udp and ip[6:2] & 0x3fff = 0") lets through to its reader:
/// IPv4 (802.1Q tags skipped: we decode those frames too), protocol UDP, not
/// a fragment, judged from the captured bytes only (so a frame cut short by
/// the snapshot length can pass).  Only the pcap reader's batching uses it.
bool passes_udp_filter(link_type link, const std::uint8_t *data, std::size_t size);

/// Decode an IPv4 packet (starting at the IP header).
frame_status decode_ipv4_udp(udp_frame &out, const std::uint8_t *data, std::size_t size);

// ------------------------------------------------------------ building

/// Ethernet II + IPv4 (no options) + UDP headers.
constexpr std::size_t ETH_IPV4_UDP_HEADERS = ETHERNET_HEADER_SIZE + IPV4_MIN_HEADER_SIZE + UDP_HEADER_SIZE;

inline void store_be16(std::uint8_t *p, std::uint16_t v)
{
    p[0] = std::uint8_t(v >> 8);
    p[1] = std::uint8_t(v);
}

inline void store_be32(std::uint8_t *p, std::uint32_t v)
{
    store_be16(p, std::uint16_t(v >> 16));
    store_be16(p + 2, std::uint16_t(v));
}

/// The Ethernet address of IPv4 multicast group @a group (host byte order):
/// 01:00:5e and the low 23 bits of the group (RFC 1112).
void multicast_mac(std::uint8_t mac[6], std::uint32_t group);

/// The two ends of a UDP datagram in an Ethernet frame (addresses and ports
/// in host byte order).
struct frame_endpoints
{
    std::uint8_t dst_mac[6];
    std::uint8_t src_mac[6];
    std::uint32_t src_ip;
    std::uint32_t dst_ip;
    std::uint16_t src_port;
    std::uint16_t dst_port;
};

/// Write the ETH_IPV4_UDP_HEADERS bytes of headers at @a out, all but what
/// depends on the datagram (lengths, IP identification, IP checksum: left 0,
/// see finish_eth_ipv4_udp).  Don't-fragment is set, the UDP checksum is 0.
void write_eth_ipv4_udp(std::uint8_t *out, const frame_endpoints &ends, std::uint8_t ttl);

/// Complete headers made by write_eth_ipv4_udp for a UDP payload of
/// @a payload bytes: IPv4 total length, identification, header checksum and
/// UDP length.
void finish_eth_ipv4_udp(std::uint8_t *out, std::size_t payload, std::uint16_t ip_id);

} // namespace spead2::protocol
