// The chunk placement core.
//
// A chunk_stream receives batches of decoded packets from its readers,
// assembles them into heaps (live_heap slots of a heap_table) and writes
// each heap's payload straight into the chunk chosen by the user's place
// callback, keeping a sliding window of at most max_chunks chunks
// (chunk_window).  Completed chunks leave through the ready callback; new
// ones come from allocate.
//
// Unlike the reference, every placement is bounds-checked: a heap whose
// heap_offset/heap_index/extra_offset would write outside the chunk is dropped
// and counted in the "out_of_range_heaps" statistic.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "chunk/chunk_window.h"
#include "chunk/config.h"
#include "chunk/drop_log.h"
#include "chunk/heap_table.h"
#include "chunk/stream_stats.h"
#include "common/log_limiter.h"
#include "common/memcpy.h"
#include "common/thread_pool.h"
#include "protocol/spead.h"
#include "transport/reader.h"
#include "transport/reader_set.h"
#include "transport/stream_control.h"

namespace spead2::chunk
{

using allocate_function = std::function<std::unique_ptr<chunk>(std::int64_t chunk_id, std::uint64_t *batch_stats)>;
using ready_function = std::function<void(std::unique_ptr<chunk> &&, std::uint64_t *batch_stats)>;

class chunk_stream : public transport::packet_sink, public transport::stream_control
{
public:
    chunk_stream(std::shared_ptr<thread_pool> pool,
                 const stream_config &config,
                 const chunk_stream_config &chunk_config,
                 allocate_function allocate,
                 ready_function ready);
    ~chunk_stream() override;

    /// The effective configuration (unsized heaps disallowed, chunk stats added).
    const stream_config &get_config() const override { return config; }
    const chunk_stream_config &get_chunk_config() const { return chunk_config; }
    std::shared_ptr<thread_pool> get_thread_pool() const { return pool; }

    /// Construct and attach a reader.  @a factory receives the sink and the
    /// worker to bind to.  Ignored (returns false) if the stream has stopped.
    bool add_reader(const transport::reader_factory &factory) override;

    /// Start readers held back by explicit_start.
    void start() override;
    /// Stop the stream from the user's side: chunks still in the window are
    /// flushed to ready, live heaps are flushed, readers are stopped and closed.
    void stop() override;
    bool is_stopped() const { return stopped.load(); }

    /// A snapshot of the statistics.
    std::vector<std::uint64_t> get_stats() const override;

    // packet_sink
    bool batch_begin() override;
    bool batch_packets(const protocol::packet_header *packets, std::size_t n) override;
    void batch_malformed(std::size_t n) override;
    void batch_end(bool end_of_stream) override;

protected:
    /// Called (with the stream lock held, on the worker) after a stop that
    /// came from the data: stop item, end of file, queue stopped.
    virtual void network_stop_hook() {}
    /// Wait for readers to finish and close them; the stream lock must not be held.
    void stop_readers();

    // Where chunks come from and go to.  The defaults use the allocate and
    // ready callbacks; a group member borrows chunks from its group instead.
    // All run with the stream lock held, on the thread handling a batch (or
    // the thread stopping the stream).
    /// A chunk for a new tail ID (nullptr: none, heaps for it are dropped).
    virtual chunk *acquire_chunk(std::int64_t chunk_id);
    /// A chunk leaves the window at its head.
    virtual void release_chunk(chunk *c);
    /// The window's head moved to @a head (chunk_window::END once stopped).
    virtual void head_moved(std::uint64_t head) {}

    /// Release chunks until the window's head is at least @a target (no-op
    /// once stopped).  Takes the stream lock.
    void flush_window_until(std::uint64_t target);
    std::uint64_t *get_batch_stats() { return statistics.batch.data(); }
    std::uintptr_t get_stream_id() const { return stream_id; }

private:
    /// Per-batch counts of the chunk statistics (the core ones are in statistics.counters).
    struct chunk_counters
    {
        std::uint64_t too_old = 0;
        std::uint64_t rejected = 0;
        std::uint64_t out_of_range = 0;
        std::uint64_t malformed = 0;
    };

    std::shared_ptr<thread_pool> pool;
    stream_config config;
    chunk_stream_config chunk_config;
    allocate_function allocate;
    ready_function ready;
    memcpy_function copy;
    /// Packets with at least this much payload get no destination prefetch
    /// (0: none do, for MEMCPY_NONTEMPORAL: its stores bypass the cache, and
    /// a line prefetched for writing must be evicted again before each one).
    std::uint64_t dest_prefetch_max_payload;
    std::size_t presence_payload_size;
    std::size_t max_heaps;
    std::size_t substreams;
    bool allow_out_of_order;
    bool stop_on_stop_item;
    std::uintptr_t stream_id;
    std::size_t first_chunk_stat;   ///< index of too_old_heaps in the stats vector

    // Guarded by queue_mutex
    std::mutex queue_mutex;
    heap_table heaps;
    stream_statistics statistics;
    chunk_window window;
    log_limiter drops;
    chunk_counters chunk_counts;
    std::size_t batch_packet_count = 0;
    std::int64_t batch_time = 0;   ///< steady clock (CLOCK_MONOTONIC) ns when the batch began
    bool stopped_in_batch = false;
    bool network_stop_pending = false;   ///< run network_stop_hook once the batch is merged
    std::vector<std::int64_t> item_values;
    std::vector<std::uint64_t> item_keys;   ///< wanted items as pointer top bits, for item_keys_hab
    int item_keys_hab = -1;
    std::vector<std::uint8_t> extra_scratch;
    chunk_place_data place_data;
    // The last single-packet heap placed (prefetch_next_single); the chunk is
    // only compared, never dereferenced.
    const chunk *last_single_target = nullptr;
    std::size_t last_single_offset = 0;

    std::atomic<bool> stopped{false};


    transport::reader_set readers;

    // Heap assembly
    void process_packet(const protocol::packet_header &ph);
    void process_single(const protocol::packet_header &ph);
    std::size_t claim_slot(std::int64_t cnt);   ///< next slot of the substream, evicting its heap
    std::size_t new_heap(const protocol::packet_header &ph);
    void heap_done(live_heap &h, bool complete);
    void flush_heaps();

    // Placement
    heap_placement place(const protocol::packet_header &ph);
    /// Per packet: always inlined (only chunk_stream.cpp calls it); a call
    /// costs more than the copy bookkeeping itself.
    inline __attribute__((always_inline)) void copy_payload(const heap_placement &where,
                                                            const protocol::packet_header &ph);
    void mark_complete(const heap_placement &where);
    void prefetch_next_destination(const live_heap &h, std::uint64_t end, std::uint64_t packet_payload);
    void prefetch_next_single(const heap_placement &where, std::uint64_t length);
    bool behind_window(std::int64_t chunk_id) const
    {
        return std::uint64_t(chunk_id) < window.get_head();
    }
    void flush_chunks();

    // Stopping
    void stop_received();  ///< with queue_mutex held
    void merge_batch();
};

} // namespace spead2::chunk
