// The live-heap table: the heaps being assembled, max_heaps slots per
// substream (substream = heap_cnt % substreams), each substream a circular
// FIFO with its own head, plus a hash table (Fibonacci hashing, chained)
// from heap_cnt to slot.  Geometry and counting follow the reference, so
// eviction order and the search_dist statistic match it.
//
// The table does not decide anything about heaps: the stream claims a slot,
// evicts what was there, fills the slot and links it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "chunk/config.h"
#include "chunk/range_set.h"

namespace spead2::chunk
{

/// Where a heap's payload goes.
struct heap_placement
{
    std::int64_t chunk_id = -1;   ///< -1: not placed (rejected, too old, out of range, no chunk)
    std::size_t heap_index = 0;
    std::size_t heap_offset = 0;
    chunk *target = nullptr;      ///< valid while the chunk is in the stream's window
};

struct live_heap
{
    std::int64_t cnt = -1;         ///< -1 marks an empty slot
    std::int64_t heap_length = 0;
    std::uint64_t received = 0;
    std::uint64_t min_length = 0;  ///< >= heap_length; larger: item addresses beyond it (never completes)
    int heap_address_bits = 0;
    bool stop_item = false;
    bool placed = false;
    heap_placement where;
    std::int32_t hash_next = -1;
    range_set ranges;              ///< out-of-order mode only
};

class heap_table
{
    std::size_t max_heaps;
    std::size_t substreams;
    std::vector<live_heap> slots;        ///< max_heaps × substreams
    std::vector<std::size_t> sub_head;   ///< last used slot (within the substream)
    std::vector<std::int32_t> buckets;
    int bucket_shift;

    std::size_t bucket(std::int64_t cnt) const;

public:
    heap_table(std::size_t max_heaps, std::size_t substreams);

    std::size_t size() const { return slots.size(); }
    live_heap &operator[](std::size_t slot) { return slots[slot]; }

    /// The slot of the live heap @a cnt, or -1.  Adds to @a search_dist as
    /// the reference counts: one per chain entry looked at, plus one on a miss.
    std::int32_t find(std::int64_t cnt, std::uint64_t &search_dist) const;
    /// Advance the head of @a cnt's substream and return that slot; it may
    /// still hold a live heap, which the caller must evict (unlink) first.
    std::size_t next_slot(std::int64_t cnt);
    /// Make the heap in @a slot (cnt set) findable.
    void link(std::size_t slot);
    /// Remove the heap in @a slot from the hash table and mark the slot empty.
    void unlink(std::size_t slot);

    /// Call f(slot) for every live heap, substream by substream, oldest first.
    template<typename F>
    void for_each_live(const F &f)
    {
        for (std::size_t sub = 0; sub < substreams; sub++)
            for (std::size_t i = 1; i <= max_heaps; i++)
            {
                const std::size_t slot = sub * max_heaps + (sub_head[sub] + i) % max_heaps;
                if (slots[slot].cnt >= 0)
                    f(slot);
            }
    }
};

} // namespace spead2::chunk
