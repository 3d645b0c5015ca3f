// A heap as the heap-at-a-time stream delivers it: the payload, the item
// pointers (de-duplicated, specials 1-4 left out), the flavour and what is
// known about its completeness.
//
// A contiguous heap (every byte up to the end of its last item received)
// yields items: addressed items sorted by address, each running to the next
// item's address (or the end of the payload; zero-length ones are left out),
// then immediates sorted by value; NULL items only bound their predecessor
// and descriptors (ID 5) are kept apart.  An incomplete heap keeps no payload and yields only its
// immediates, as in the reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "heap/memory.h"

namespace spead2::heap
{

struct heap_item
{
    std::uint64_t id;
    bool immediate;
    std::uint64_t value;         ///< immediate value, or address
    const std::uint8_t *data;    ///< addressed items: into the payload; nullptr for immediates
    std::size_t length;          ///< addressed items: bytes; immediates: heap_address_bits / 8
};

struct received_heap
{
    std::int64_t cnt = -1;
    std::int64_t heap_length = -1;     ///< -1: never announced (unsized heap)
    std::uint64_t received_length = 0;
    std::uint64_t min_length = 0;      ///< bytes implied by item addresses and payload seen
    int heap_address_bits = 40;
    int bug_compat = 0;
    bool complete = false;
    bool contiguous = false;
    bool end_of_stream = false;        ///< has an immediate STREAM_CTRL = CTRL_STREAM_STOP
    std::vector<std::uint64_t> pointers;   ///< raw item pointers in host order, arrival order, unique
    payload_buffer payload;            ///< contiguous heaps only (min_length bytes)
    std::vector<std::pair<std::uint64_t, std::uint64_t>> payload_ranges;   ///< if asked for

    /// Immediate STREAM_CTRL = CTRL_STREAM_START among the items.
    bool start_of_stream() const;
    /// The items (without descriptors), or, with @a descriptors, only the descriptor items.
    std::vector<heap_item> items(bool descriptors = false) const;
};

} // namespace spead2::heap
