// SPEAD wire format: constants and the packet decoder.
//
// A SPEAD packet is an 8-byte header, n_items 8-byte item pointers and a
// payload; every field is big-endian.  Only the SPEAD-64-XX flavours exist in
// practice (64-bit item pointers); XX, the heap-address width, is read from
// each packet.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spead2::protocol
{

// Special item IDs
constexpr std::uint64_t NULL_ID = 0x00;
constexpr std::uint64_t HEAP_CNT_ID = 0x01;
constexpr std::uint64_t HEAP_LENGTH_ID = 0x02;
constexpr std::uint64_t PAYLOAD_OFFSET_ID = 0x03;
constexpr std::uint64_t PAYLOAD_LENGTH_ID = 0x04;
constexpr std::uint64_t DESCRIPTOR_ID = 0x05;
constexpr std::uint64_t STREAM_CTRL_ID = 0x06;
constexpr std::uint64_t DESCRIPTOR_NAME_ID = 0x10;
constexpr std::uint64_t DESCRIPTOR_DESCRIPTION_ID = 0x11;
constexpr std::uint64_t DESCRIPTOR_SHAPE_ID = 0x12;
constexpr std::uint64_t DESCRIPTOR_FORMAT_ID = 0x13;
constexpr std::uint64_t DESCRIPTOR_ID_ID = 0x14;
constexpr std::uint64_t DESCRIPTOR_DTYPE_ID = 0x15;

// Values of the STREAM_CTRL item
constexpr std::uint64_t CTRL_STREAM_START = 0;
constexpr std::uint64_t CTRL_DESCRIPTOR_REISSUE = 1;
constexpr std::uint64_t CTRL_STREAM_STOP = 2;
constexpr std::uint64_t CTRL_DESCRIPTOR_UPDATE = 3;

// Bug-compatibility flags (accepted for API compatibility; the receive path
// for chunks does not depend on them).
constexpr int BUG_COMPAT_DESCRIPTOR_WIDTHS = 1;
constexpr int BUG_COMPAT_SHAPE_BIT_1 = 2;
constexpr int BUG_COMPAT_SWAP_ENDIAN = 4;
constexpr int BUG_COMPAT_PYSPEAD_0_5_2 = 7;

constexpr std::uint16_t MAGIC_VERSION = 0x5304;  // magic 'S' (0x53), version 4
constexpr std::size_t HEADER_SIZE = 8;
constexpr std::size_t ITEM_POINTER_SIZE = 8;

/// Why a packet was rejected by decode_packet (for logging and counting).
enum class decode_status
{
    ok,
    too_small,          ///< shorter than the 8-byte header
    bad_magic,          ///< magic/version is not 0x53 0x04
    bad_widths,         ///< zero item-id or address width, or widths not summing to 64 bits
    items_overflow,     ///< item pointers run past the end of the buffer
    missing_specials,   ///< no immediate HEAP_CNT, PAYLOAD_OFFSET or PAYLOAD_LENGTH
    payload_overflow,   ///< the payload runs past the end of the buffer
    length_mismatch,    ///< payload_offset + payload_length > heap_length
};

/// Human-readable reason for a decode_status.
const char *describe(decode_status status);

/// A decoded packet.  Pointers refer into the original buffer.
struct packet_header
{
    int heap_address_bits = 0;
    int n_items = 0;                ///< item pointers after the leading run of specials
    std::int64_t heap_cnt = -1;
    std::int64_t heap_length = -1;  ///< -1 if the packet has no immediate HEAP_LENGTH
    std::int64_t payload_offset = -1;
    std::int64_t payload_length = -1;
    const std::uint8_t *pointers = nullptr;  ///< first item pointer not in the leading run of specials
    const std::uint8_t *payload = nullptr;
    const std::uint8_t *packet = nullptr;    ///< start of the packet (header)
    std::size_t size = 0;                    ///< total packet size: header + pointers + payload
    int all_items = 0;                       ///< total number of item pointers in the packet
    /// Largest address of the packet's non-immediate item pointers (0 if none).
    std::uint64_t max_address = 0;
    /// The packet has an immediate STREAM_CTRL item with value CTRL_STREAM_STOP.
    bool stop = false;
    /// When the packet arrived, in ns, if the transport knows better than
    /// "when its batch began" (pcap: the record's capture time); -1 otherwise.
    std::int64_t time_ns = -1;
};

inline std::uint64_t load_be64(const std::uint8_t *p)
{
    std::uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

inline std::uint16_t load_be16(const std::uint8_t *p)
{
    return std::uint16_t((p[0] << 8) | p[1]);
}

inline std::uint32_t load_be32(const std::uint8_t *p)
{
    std::uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

/**
 * Decode the SPEAD packet at the start of @a data (at most @a max_size bytes).
 * On success fills @a out and returns decode_status::ok; out.size is the
 * packet's own extent (which may be smaller than max_size).
 */
decode_status decode_packet(packet_header &out, const std::uint8_t *data, std::size_t max_size);

/**
 * Decode a datagram that must hold exactly one packet: on top of
 * decode_packet, the packet must fill the datagram exactly.  Returns false
 * (and logs why at debug/info level) if the datagram is to be dropped.
 */
bool decode_datagram(packet_header &out, const std::uint8_t *data, std::size_t size);

/// Split an item pointer into its parts, for a given heap-address width.
struct item_pointer
{
    bool immediate;
    std::uint64_t id;
    std::uint64_t value;  ///< immediate value, or address within the heap payload
};

inline item_pointer decode_item_pointer(std::uint64_t raw, int heap_address_bits)
{
    const std::uint64_t value_mask = (std::uint64_t(1) << heap_address_bits) - 1;
    const std::uint64_t id_mask = (std::uint64_t(1) << (63 - heap_address_bits)) - 1;
    return item_pointer{
        bool(raw >> 63),
        (raw >> heap_address_bits) & id_mask,
        raw & value_mask,
    };
}

/// Log a summary of the datagrams decode_datagram dropped without logging
/// each (rate-limited log, see common/log_limiter.h); cheap when there are none.
void summarise_decode_log(bool force = false);

} // namespace spead2::protocol
