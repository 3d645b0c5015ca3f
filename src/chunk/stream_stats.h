// The statistics of a stream (chunk or heap), counted per batch and merged
// into the totals once per batch.
//
// The worker counts into `counters` (the core statistics) and hands `batch`
// (one entry per statistic, zeroed per batch) to user callbacks, all under
// the stream lock; merge() adds the batch to the totals under the statistics
// lock, which snapshot() also takes.  As in the reference, every entry from
// the first custom statistic on is combined by its mode (counters add,
// maxima take the larger); entries of the core statistics in `batch` are
// ignored.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "chunk/config.h"

namespace spead2::chunk
{

struct core_counters
{
    std::uint64_t heaps = 0;
    std::uint64_t evicted = 0;
    std::uint64_t flushed = 0;
    std::uint64_t packets = 0;
    std::uint64_t single_packet_heaps = 0;
    std::uint64_t search_dist = 0;
};

class stream_statistics
{
    std::vector<stat_config> config;
    mutable std::mutex mutex;
    std::vector<std::uint64_t> totals;

public:
    core_counters counters;                 ///< this batch's core counts (worker only)
    std::vector<std::uint64_t> batch;       ///< this batch's entries, handed to callbacks (worker only)

    explicit stream_statistics(std::vector<stat_config> config)
        : config(std::move(config)), totals(this->config.size(), 0), batch(this->config.size(), 0)
    {
    }

    /// Merge the batch into the totals; @a extra(totals) adds what only the
    /// owner counts, under the same lock.  Resets the batch.
    template<typename Extra>
    void merge(const Extra &extra)
    {
        std::lock_guard<std::mutex> lock(mutex);
        totals[stat_index::heaps] += counters.heaps;
        totals[stat_index::incomplete_heaps_evicted] += counters.evicted;
        totals[stat_index::incomplete_heaps_flushed] += counters.flushed;
        totals[stat_index::packets] += counters.packets;
        totals[stat_index::single_packet_heaps] += counters.single_packet_heaps;
        totals[stat_index::search_dist] += counters.search_dist;
        for (std::size_t i = stat_index::custom; i < totals.size(); i++)
            totals[i] = config[i].combine(totals[i], batch[i]);
        extra(totals);
        counters = core_counters();
        std::fill(batch.begin(), batch.end(), 0);
    }

    /// Count one batch of @a n packets (batches, max_batch).
    void count_batch(std::size_t n)
    {
        std::lock_guard<std::mutex> lock(mutex);
        totals[stat_index::batches]++;
        totals[stat_index::max_batch] = std::max<std::uint64_t>(totals[stat_index::max_batch], n);
    }

    /// Add to a statistic directly (outside a batch, e.g. worker_blocked).
    void add(std::size_t index, std::uint64_t n)
    {
        std::lock_guard<std::mutex> lock(mutex);
        totals[index] += n;
    }

    std::vector<std::uint64_t> snapshot() const
    {
        std::lock_guard<std::mutex> lock(mutex);
        return totals;
    }
};

} // namespace spead2::chunk
