#include "send/heap.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace spead2::send
{

namespace
{

void store_be64(std::uint8_t *p, std::uint64_t v)
{
    v = __builtin_bswap64(v);
    std::memcpy(p, &v, 8);
}

constexpr std::uint64_t NULL_ID = 0;
constexpr std::uint64_t HEAP_CNT_ID = 1;
constexpr std::uint64_t HEAP_LENGTH_ID = 2;
constexpr std::uint64_t PAYLOAD_OFFSET_ID = 3;
constexpr std::uint64_t PAYLOAD_LENGTH_ID = 4;

} // anonymous namespace

heap::heap(int heap_address_bits) : heap_address_bits(heap_address_bits)
{
    if (heap_address_bits <= 0 || heap_address_bits >= 64 || heap_address_bits % 8 != 0)
        throw std::invalid_argument("heap_address_bits must be a multiple of 8 between 8 and 56");
}

void heap::add_immediate(std::uint64_t id, std::uint64_t value)
{
    if (heap_address_bits < 64 && (value >> heap_address_bits) != 0)
        throw std::invalid_argument("immediate value " + std::to_string(value) + " does not fit in "
                                    + std::to_string(heap_address_bits) + " bits");
    if (id >> (63 - heap_address_bits))
        throw std::invalid_argument("item ID " + std::to_string(id) + " does not fit in the flavour");
    items.push_back({id, true, value, nullptr, 0});
}

void heap::add_item(std::uint64_t id, const std::uint8_t *data, std::size_t size)
{
    if (id >> (63 - heap_address_bits))
        throw std::invalid_argument("item ID " + std::to_string(id) + " does not fit in the flavour");
    items.push_back({id, false, 0, data, size});
}

std::uint64_t packet_generator::make_pointer(bool immediate, std::uint64_t id, std::uint64_t value) const
{
    return (std::uint64_t(immediate) << 63) | (id << hab) | value;
}

packet_generator::packet_generator(const heap &h, std::int64_t cnt, std::size_t max_packet_size)
    : h(h), cnt(cnt), max_packet_size(max_packet_size), hab(h.get_heap_address_bits()),
      max_ptrs((max_packet_size - PACKET_HEADER_SIZE - PAYLOAD_GRANULARITY) / ITEM_POINTER_SIZE - SPECIAL_ITEMS)
{
    if (max_packet_size < MIN_PACKET_SIZE)
        throw std::invalid_argument("max_packet_size must be at least " + std::to_string(MIN_PACKET_SIZE)
                                    + " bytes (header, the special items, one item pointer and 8 bytes of payload)");
    if (cnt < 0 || (hab < 64 && (std::uint64_t(cnt) >> hab) != 0))
        throw std::invalid_argument("heap cnt " + std::to_string(cnt) + " does not fit in the flavour");
    const std::uint64_t limit = hab < 64 ? (std::uint64_t(1) << hab) : ~std::uint64_t(0);
    for (const auto &item : h.get_items())
    {
        if (item.immediate)
            pointers.push_back(make_pointer(true, item.id, item.value));
        else
        {
            if (payload_size >= limit)
                throw std::invalid_argument("heap payload too large for the flavour");
            pointers.push_back(make_pointer(false, item.id, payload_size));
            if (item.size)
                pieces.emplace_back(item.data, item.size);
            payload_size += item.size;
        }
    }
    // Padding, as the reference pads: without repeat_pointers, the packets
    // that carry item pointers, except the last, carry 8 bytes of payload
    // each; the reference counts those packets with room for one more (NULL)
    // pointer.  Any heap has at least one byte.  The zero padding follows
    // the items' data and is addressed by a NULL item.
    std::uint64_t needed = 1;
    if (!h.get_repeat_pointers())
    {
        const std::size_t packets = (pointers.size() + 1 + max_ptrs - 1) / max_ptrs;
        needed = PAYLOAD_GRANULARITY * (packets - 1) + 1;
    }
    if (payload_size < needed)
    {
        pointers.push_back(make_pointer(false, NULL_ID, payload_size));
        payload_size = needed;
    }
    if (payload_size >= limit)
        throw std::invalid_argument("heap payload too large for the flavour");
    if (h.get_repeat_pointers()
        && PACKET_HEADER_SIZE + (SPECIAL_ITEMS + pointers.size()) * ITEM_POINTER_SIZE + PAYLOAD_GRANULARITY
               > max_packet_size)
        throw std::invalid_argument("repeat_pointers is set but the item pointers do not fit in one packet");
}

std::size_t packet_generator::next_packet(std::uint8_t *out)
{
    // Choose the item pointers for this packet.
    std::size_t first, count;
    if (h.get_repeat_pointers())
    {
        first = 0;
        count = pointers.size();
    }
    else
    {
        first = next_pointer;
        count = std::min(pointers.size() - next_pointer, max_ptrs);
        next_pointer += count;
    }
    const std::size_t n_items = SPECIAL_ITEMS + count;
    const std::size_t header_bytes = PACKET_HEADER_SIZE + n_items * ITEM_POINTER_SIZE;
    // Payload goes in multiples of 8 bytes per packet (the last one may be
    // shorter), as the reference cuts heaps.
    std::size_t space = (max_packet_size - header_bytes) & ~std::size_t(7);
    std::uint64_t length = std::min<std::uint64_t>(space, payload_size - offset);

    const std::uint64_t header = (std::uint64_t(0x5304) << 48)
                                 | (std::uint64_t((64 - hab) / 8) << 40)
                                 | (std::uint64_t(hab / 8) << 32)
                                 | std::uint64_t(n_items);
    store_be64(out, header);
    std::uint8_t *p = out + PACKET_HEADER_SIZE;
    store_be64(p, make_pointer(true, HEAP_CNT_ID, std::uint64_t(cnt)));
    store_be64(p + 8, make_pointer(true, HEAP_LENGTH_ID, payload_size));
    store_be64(p + 16, make_pointer(true, PAYLOAD_OFFSET_ID, offset));
    store_be64(p + 24, make_pointer(true, PAYLOAD_LENGTH_ID, length));
    p += SPECIAL_ITEMS * ITEM_POINTER_SIZE;
    for (std::size_t i = 0; i < count; i++, p += ITEM_POINTER_SIZE)
        store_be64(p, pointers[first + i]);

    // Payload
    std::uint64_t left = length;
    while (left > 0 && piece < pieces.size())
    {
        const auto &pc = pieces[piece];
        std::size_t n = std::min<std::uint64_t>(left, pc.second - piece_offset);
        std::memcpy(p, pc.first + piece_offset, n);
        p += n;
        left -= n;
        piece_offset += n;
        if (piece_offset == pc.second)
        {
            piece++;
            piece_offset = 0;
        }
    }
    std::memset(p, 0, left);   // padding (see the constructor)
    offset += length;
    if (offset == payload_size && next_pointer >= pointers.size())
        done = true;
    if (h.get_repeat_pointers() && offset == payload_size)
        done = true;
    return header_bytes + std::size_t(length);
}

} // namespace spead2::send
