#include "chunk/heap_table.h"

#include <algorithm>

namespace spead2::chunk
{

namespace
{

// Fibonacci hashing multiplier (2^64 / golden ratio).
constexpr std::uint64_t HASH_MULTIPLIER = 11400714819323198485ULL;
// Hash buckets per slot (kept sparse so chains stay short), as the reference.
constexpr std::size_t BUCKETS_PER_SLOT = 4;
constexpr std::size_t MIN_HASH_SLOTS = 4;

std::size_t next_pow2(std::size_t x)
{
    std::size_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

int log2_exact(std::size_t x)
{
    int s = 0;
    while ((std::size_t(1) << s) < x)
        s++;
    return s;
}

} // anonymous namespace

heap_table::heap_table(std::size_t max_heaps, std::size_t substreams)
    : max_heaps(max_heaps), substreams(substreams),
      slots(max_heaps * substreams), sub_head(substreams, 0)
{
    const std::size_t n_buckets = BUCKETS_PER_SLOT * next_pow2(std::max(MIN_HASH_SLOTS, slots.size()));
    buckets.assign(n_buckets, -1);
    bucket_shift = 64 - log2_exact(n_buckets);
}

std::size_t heap_table::bucket(std::int64_t cnt) const
{
    return std::size_t((std::uint64_t(cnt) * HASH_MULTIPLIER) >> bucket_shift);
}

std::int32_t heap_table::find(std::int64_t cnt, std::uint64_t &search_dist) const
{
    std::uint64_t dist = 1;
    for (std::int32_t i = buckets[bucket(cnt)]; i >= 0; i = slots[i].hash_next, dist++)
    {
        if (slots[i].cnt == cnt)
        {
            search_dist += dist;
            return i;
        }
    }
    search_dist += dist;
    return -1;
}

std::size_t heap_table::next_slot(std::int64_t cnt)
{
    // Called for every heap: no division in the common single-substream case.
    const std::size_t sub = substreams == 1 ? 0 : std::size_t(std::uint64_t(cnt) % substreams);
    std::size_t &pos = sub_head[sub];
    pos = (pos + 1 == max_heaps) ? 0 : pos + 1;
    return sub * max_heaps + pos;
}

void heap_table::link(std::size_t slot)
{
    const std::size_t b = bucket(slots[slot].cnt);
    slots[slot].hash_next = buckets[b];
    buckets[b] = std::int32_t(slot);
}

void heap_table::unlink(std::size_t slot)
{
    std::int32_t *link = &buckets[bucket(slots[slot].cnt)];
    while (*link >= 0)
    {
        if (std::size_t(*link) == slot)
        {
            *link = slots[slot].hash_next;
            break;
        }
        link = &slots[*link].hash_next;
    }
    slots[slot].hash_next = -1;
    slots[slot].cnt = -1;
}

} // namespace spead2::chunk
