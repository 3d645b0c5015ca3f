// Frame decoding for frame-level transports (pcap replay, ibverbs): find the
// UDP payload inside a link-layer frame.
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

} // namespace spead2::protocol
