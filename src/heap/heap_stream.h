// The heap-at-a-time receive stream (the reference's spead2.recv.Stream).
//
// Packets arrive in batches from readers (transport::packet_sink) and are
// assembled into heaps with the same live-heap table and the same rules as
// the chunk core (chunk/heap_table.h, chunk/range_set.h): single-packet heaps
// take a slot, FIFO eviction per substream, in-order or out-of-order payload,
// stop item.  Unlike chunk streams, heaps may be unsized (HEAP_LENGTH absent;
// the payload grows) and each heap owns its payload.  Finished heaps go to a
// ring of heaps; a full ring blocks the worker (counted in worker_blocked).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "chunk/config.h"
#include "chunk/heap_table.h"
#include "chunk/drop_log.h"
#include "chunk/stream_stats.h"
#include "common/memcpy.h"
#include "common/ringbuffer.h"
#include "common/thread_pool.h"
#include "heap/heap.h"
#include "heap/memory.h"
#include "protocol/spead.h"
#include "transport/reader.h"
#include "transport/reader_set.h"
#include "transport/stream_control.h"

namespace spead2::heap
{

constexpr std::size_t DEFAULT_RING_HEAPS = 4;

class ring_stream_config
{
    std::size_t heaps = DEFAULT_RING_HEAPS;
    bool contiguous_only = true;
    bool incomplete_keep_payload_ranges = false;

public:
    ring_stream_config &set_heaps(std::size_t v);
    std::size_t get_heaps() const { return heaps; }
    ring_stream_config &set_contiguous_only(bool v) { contiguous_only = v; return *this; }
    bool get_contiguous_only() const { return contiguous_only; }
    ring_stream_config &set_incomplete_keep_payload_ranges(bool v) { incomplete_keep_payload_ranges = v; return *this; }
    bool get_incomplete_keep_payload_ranges() const { return incomplete_keep_payload_ranges; }
};

using heap_ringbuffer = ringbuffer<std::unique_ptr<received_heap>>;

class heap_stream : public transport::packet_sink, public transport::stream_control
{
public:
    heap_stream(std::shared_ptr<thread_pool> pool,
                const chunk::stream_config &config,
                const ring_stream_config &ring_config,
                std::shared_ptr<memory_allocator> allocator = nullptr);
    ~heap_stream() override;

    const chunk::stream_config &get_config() const override { return config; }
    const ring_stream_config &get_ring_config() const { return ring_config; }
    const std::shared_ptr<heap_ringbuffer> &get_ringbuffer() const { return ring; }

    bool add_reader(const transport::reader_factory &factory) override;
    void start() override;
    /// Stop the ring (heaps not yet taken stay available), flush live heaps
    /// (dropped: the ring is stopped) and stop the readers.
    void stop() override;
    std::vector<std::uint64_t> get_stats() const override;

    // packet_sink
    bool batch_begin() override;
    bool batch_packets(const protocol::packet_header *packets, std::size_t n) override;
    void batch_malformed(std::size_t) override {}   // not counted, as in the reference
    void batch_end(bool end_of_stream) override;

private:

    std::shared_ptr<thread_pool> pool;
    chunk::stream_config config;
    ring_stream_config ring_config;
    std::shared_ptr<memory_allocator> allocator;
    std::shared_ptr<heap_ringbuffer> ring;
    memcpy_function copy;
    bool allow_out_of_order;
    bool allow_unsized_heaps;
    bool stop_on_stop_item;
    int bug_compat;

    // Guarded by queue_mutex
    std::mutex queue_mutex;
    chunk::heap_table table;
    std::vector<std::unique_ptr<received_heap>> building;   ///< per slot of the table
    chunk::stream_statistics statistics;
    log_limiter drops;   ///< rate-limited log of dropped packets
    std::size_t batch_packet_count = 0;
    bool stopped_in_batch = false;
    bool ring_stop_pending = false;

    std::atomic<bool> stopped{false};


    transport::reader_set readers;

    void process_packet(const protocol::packet_header &ph);
    std::size_t claim_slot(std::int64_t cnt);
    /// Add an accepted-or-not packet to the heap in @a slot; true if accepted.
    bool add_to_heap(std::size_t slot, const protocol::packet_header &ph);
    void heap_ready(std::size_t slot);
    void push(std::unique_ptr<received_heap> &&h);
    void flush_heaps();
    void stop_received();
    void merge_batch();
    void stop_readers();
};

} // namespace spead2::heap
