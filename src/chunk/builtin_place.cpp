#include "chunk/builtin_place.h"

#include <cstring>

#include "chunk/config.h"

namespace spead2::chunk
{

namespace
{

void set_extra(chunk_place_data &d, std::size_t index, std::int64_t key)
{
    if (!d.extra)
        return;   // max_heap_extra too small (0): nothing to write
    std::memcpy(d.extra, &key, sizeof(key));
    d.extra_offset = index * sizeof(key);
    d.extra_size = sizeof(key);
}

} // anonymous namespace

void place_by_counter(void *data, std::size_t, void *context)
{
    auto &d = *static_cast<chunk_place_data *>(data);
    const auto &p = *static_cast<const counter_place_params *>(context);
    // items: [HEAP_CNT, HEAP_LENGTH]
    const std::int64_t cnt = d.items[0];
    if (d.items[1] != p.heap_size || cnt < p.cnt_first)
        return;
    const std::int64_t offset = cnt - p.cnt_first;
    if (offset % p.cnt_step != 0)
        return;
    const std::int64_t position = offset / p.cnt_step;
    const std::size_t index = std::size_t(position % p.heaps_per_chunk);
    d.chunk_id = std::int64_t(std::uint64_t(position / p.heaps_per_chunk) + std::uint64_t(p.chunk_id_bias));
    d.heap_index = index;
    d.heap_offset = index * std::size_t(p.heap_size);
    if (p.extra)
        set_extra(d, index, cnt);
}

void place_by_timestamp_channel(void *data, std::size_t, void *context)
{
    auto &d = *static_cast<chunk_place_data *>(data);
    const auto &p = *static_cast<const timestamp_channel_place_params *>(context);
    // items: [timestamp, channel, HEAP_LENGTH]
    const std::int64_t timestamp = d.items[0];
    const std::int64_t channel = d.items[1];
    if (d.items[2] != p.heap_size || timestamp < p.first_timestamp || channel < 0)
        return;
    if (channel % p.channel_step != 0)
        return;
    const std::int64_t c = channel / p.channel_step;
    if (c >= p.channels)
        return;
    const std::int64_t t = (timestamp - p.first_timestamp) / p.timestamp_step;   // both >= 0: floor
    const std::size_t index = std::size_t((t % p.timestamps_per_chunk) * p.channels + c);
    d.chunk_id = std::int64_t(std::uint64_t(t / p.timestamps_per_chunk) + std::uint64_t(p.chunk_id_bias));
    d.heap_index = index;
    d.heap_offset = index * std::size_t(p.heap_size);
    if (p.extra)
        set_extra(d, index, timestamp);
}

} // namespace spead2::chunk
