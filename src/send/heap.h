// A heap to send, and the packet generator that cuts it into SPEAD packets.
//
// Every packet starts with the four special immediates (HEAP_CNT,
// HEAP_LENGTH, PAYLOAD_OFFSET, PAYLOAD_LENGTH).  The heap's own item pointers
// follow: all of them in the first packet(s), or in every packet when
// repeat_pointers is set (so a receiver can place a heap from any packet).
// The payload is the concatenation of the addressed items' data, then zero
// padding addressed by a NULL item where needed: a heap with no payload gets
// one byte (so every heap reaches a receiver's place callback), and a heap
// whose item pointers need several packets gets enough for each of those
// packets but the last to carry 8 bytes of payload (payload offsets stay
// distinct), as the reference pads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <sys/uio.h>

namespace spead2::send
{

/// Sizes, in bytes, of the fixed parts of a packet.
constexpr std::size_t PACKET_HEADER_SIZE = 8;
constexpr std::size_t ITEM_POINTER_SIZE = 8;
constexpr std::size_t SPECIAL_ITEMS = 4;
/// Payload is cut into packets in multiples of this many bytes.
constexpr std::size_t PAYLOAD_GRANULARITY = 8;
/// The smallest max_packet_size: header, specials, one item pointer and one payload unit.
constexpr std::size_t MIN_PACKET_SIZE
    = PACKET_HEADER_SIZE + SPECIAL_ITEMS * ITEM_POINTER_SIZE + ITEM_POINTER_SIZE + PAYLOAD_GRANULARITY;

struct heap_item
{
    std::uint64_t id;
    bool immediate;
    std::uint64_t value;            ///< immediate value
    const std::uint8_t *data;       ///< addressed item: its bytes (owned by the caller)
    std::size_t size;
};

class heap
{
    int heap_address_bits;
    std::vector<heap_item> items;
    bool repeat = false;
public:
    /// @a heap_address_bits: 8..56, multiple of 8 (SPEAD-64-XX).
    explicit heap(int heap_address_bits = 40);
    int get_heap_address_bits() const { return heap_address_bits; }
    void add_immediate(std::uint64_t id, std::uint64_t value);
    /// The bytes must stay valid until the heap has been sent.
    void add_item(std::uint64_t id, const std::uint8_t *data, std::size_t size);
    void set_repeat_pointers(bool r) { repeat = r; }
    bool get_repeat_pointers() const { return repeat; }
    const std::vector<heap_item> &get_items() const { return items; }
};

/// Writes the packets of one heap, one at a time, into caller buffers.
class packet_generator
{
    const heap &h;
    std::int64_t cnt;
    std::size_t max_packet_size;
    int hab;
    std::vector<std::uint64_t> pointers;      ///< the heap's item pointers (big-endian ready values)
    std::vector<std::pair<const std::uint8_t *, std::size_t>> pieces;  ///< payload pieces in order
    std::uint64_t payload_size = 0;
    std::uint64_t offset = 0;                 ///< payload bytes already emitted
    std::size_t next_pointer = 0;             ///< first pointer not yet emitted (non-repeat mode)
    std::size_t piece = 0, piece_offset = 0;  ///< payload cursor
    std::size_t max_ptrs;                     ///< item pointers (besides the specials) per packet
    bool done = false;
    std::uint64_t make_pointer(bool immediate, std::uint64_t id, std::uint64_t value) const;
    /// Write the SPEAD header and item pointers of the next packet into
    /// @a out; returns their size and sets @a length to the payload bytes.
    std::size_t write_header(std::uint8_t *out, std::uint64_t &length);
    /// Hand the next @a length payload bytes to @a f(pointer, size) in
    /// pieces, advancing the payload cursor; then finish the packet.
    template<typename F>
    void walk_payload(std::uint64_t length, F &&f);
public:
    /// Throws std::invalid_argument when the heap cannot be sent with this packet size.
    packet_generator(const heap &h, std::int64_t cnt, std::size_t max_packet_size);
    bool has_next() const { return !done; }
    /// Write the next packet into @a out (at least max_packet_size bytes); returns its size.
    std::size_t next_packet(std::uint8_t *out);
    /// The next packet as parts, for transports that gather (ibverbs): the
    /// SPEAD header and item pointers are written into @a header (at least
    /// max_packet_size bytes), and the payload is appended to @a payload as
    /// pieces that point into the items' own data (padding points at static
    /// zeros).  Nothing is copied.
    /// Returns the header size; the packet is the header followed by the
    /// pieces, in order.
    std::size_t next_packet_parts(std::uint8_t *header, std::vector<iovec> &payload);
    std::uint64_t get_payload_size() const { return payload_size; }
};

} // namespace spead2::send
