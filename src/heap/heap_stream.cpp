#include "heap/heap_stream.h"

#include <algorithm>
#include <new>
#include <stdexcept>

#include "common/logging.h"

namespace spead2::heap
{

using protocol::packet_header;
using chunk::live_heap;
using chunk::range_set;
namespace stat_index = chunk::stat_index;

ring_stream_config &ring_stream_config::set_heaps(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("heaps must be positive");
    heaps = v;
    return *this;
}

heap_stream::heap_stream(std::shared_ptr<thread_pool> pool_,
                         const chunk::stream_config &config_,
                         const ring_stream_config &ring_config_,
                         std::shared_ptr<memory_allocator> allocator_)
    : pool(std::move(pool_)),
      config(config_),
      ring_config(ring_config_),
      allocator(allocator_ ? std::move(allocator_) : get_default_allocator()),
      ring(std::make_shared<heap_ringbuffer>(ring_config_.get_heaps())),
      copy(memcpy_by_id(config_.get_memcpy())),
      allow_out_of_order(config_.get_allow_out_of_order()),
      allow_unsized_heaps(config_.get_allow_unsized_heaps()),
      stop_on_stop_item(config_.get_stop_on_stop_item()),
      bug_compat(config_.get_bug_compat()),
      table(config_.get_max_heaps(), config_.get_substreams()),
      statistics(config_.get_stats()),
      drops(chunk::make_drop_log()),
      readers(config_.get_explicit_start())
{
    if (!pool)
        throw std::invalid_argument("thread_pool must not be None");
    building.resize(table.size());
    ring->add_producer();
}

heap_stream::~heap_stream()
{
    stop();
}

// ------------------------------------------------------------------ readers

bool heap_stream::add_reader(const transport::reader_factory &factory)
{
    return readers.add(factory, *this, *pool, stopped.load());
}

void heap_stream::start()
{
    readers.start(stopped.load());
}

void heap_stream::stop_readers()
{
    readers.close();
}

void heap_stream::stop()
{
    // The ring first: a worker blocked pushing a heap is released.
    ring->stop();
    {
        std::lock_guard<std::mutex> lock(queue_mutex);
        if (!stopped.load())
        {
            stopped.store(true);
            flush_heaps();
            drops.summarise(true);
            merge_batch();
        }
    }
    stop_readers();
}

void heap_stream::stop_received()
{
    if (stopped.load())
        return;
    stopped.store(true);
    stopped_in_batch = true;
    flush_heaps();
    drops.summarise(true);
    protocol::summarise_decode_log(true);
    readers.request_stop();
    // The ring ends once this batch's statistics are merged, so a consumer
    // that sees the end also sees the final statistics.
    ring_stop_pending = true;
}

// -------------------------------------------------------------- statistics

std::vector<std::uint64_t> heap_stream::get_stats() const
{
    return statistics.snapshot();
}

void heap_stream::merge_batch()
{
    statistics.merge([](std::vector<std::uint64_t> &) {});
}

// ------------------------------------------------------------------ batches

bool heap_stream::batch_begin()
{
    queue_mutex.lock();
    if (stopped.load())
    {
        queue_mutex.unlock();
        return false;
    }
    batch_packet_count = 0;
    stopped_in_batch = false;
    return true;
}

bool heap_stream::batch_packets(const packet_header *packets, std::size_t n)
{
    for (std::size_t i = 0; i < n; i++)
    {
        if (stopped.load(std::memory_order_relaxed))
            return false;
        batch_packet_count++;
        process_packet(packets[i]);
    }
    return !stopped.load(std::memory_order_relaxed);
}

void heap_stream::batch_end(bool end_of_stream)
{
    if (end_of_stream)
        stop_received();
    const bool count_batch = !(stopped_in_batch && batch_packet_count == 0);
    if (count_batch)
        statistics.count_batch(batch_packet_count);
    merge_batch();
    drops.summarise();
    protocol::summarise_decode_log();
    if (ring_stop_pending)
    {
        ring_stop_pending = false;
        ring->remove_producer();
    }
    queue_mutex.unlock();
}

// ------------------------------------------------------------ heap assembly

std::size_t heap_stream::claim_slot(std::int64_t cnt)
{
    const std::size_t slot = table.next_slot(cnt);
    if (table[slot].cnt >= 0)
    {
        // FIFO eviction: the oldest heap of this substream makes room.
        statistics.counters.evicted++;
        heap_ready(slot);
    }
    return slot;
}

void heap_stream::process_packet(const packet_header &ph)
{
    statistics.counters.packets++;
    if (ph.heap_length < 0 && !allow_unsized_heaps)
    {
        if (drops.note(chunk::DROP_UNSIZED))
            log_debug("dropped packet of heap %lld: no HEAP_LENGTH (unsized heaps are not allowed)",
                      (long long) ph.heap_cnt);
        return;
    }
    std::int32_t found = -1;
    bool fresh = false;
    if (ph.heap_length >= 0 && ph.payload_length == ph.heap_length)
        statistics.counters.single_packet_heaps++;   // a whole heap: never looked up
    else
        found = table.find(ph.heap_cnt, statistics.counters.search_dist);
    if (found < 0)
    {
        if (!allow_out_of_order && ph.payload_offset != 0)
        {
            if (drops.note(chunk::DROP_FIRST_OFFSET))
                log_debug("dropped packet of heap %lld: first packet has non-zero offset",
                          (long long) ph.heap_cnt);
            return;
        }
        const std::size_t slot = claim_slot(ph.heap_cnt);
        live_heap &h = table[slot];
        h.cnt = ph.heap_cnt;
        h.heap_length = -1;
        h.received = 0;
        h.min_length = 0;
        h.heap_address_bits = ph.heap_address_bits;
        h.stop_item = false;
        h.ranges.clear();
        if (!building[slot])
            building[slot] = std::make_unique<received_heap>();
        table.link(slot);
        found = std::int32_t(slot);
        fresh = true;
    }
    const std::size_t slot = std::size_t(found);
    if (!add_to_heap(slot, ph))
    {
        if (fresh)
        {
            // Only an allocation failure rejects a heap's first packet: it
            // leaves no heap behind.
            table.unlink(slot);
            building[slot].reset();
        }
        return;
    }
    live_heap &h = table[slot];
    const bool stop = h.stop_item && stop_on_stop_item;
    if (h.heap_length >= 0 && h.received == std::uint64_t(h.heap_length)
        && h.min_length == std::uint64_t(h.heap_length))
    {
        if (stop)
        {
            table.unlink(slot);
            building[slot].reset();   // a complete stop heap is discarded
        }
        else
            heap_ready(slot);
    }
    if (stop)
        stop_received();
}

bool heap_stream::add_to_heap(std::size_t slot, const packet_header &ph)
{
    live_heap &h = table[slot];
    received_heap &data = *building[slot];
    if (ph.heap_address_bits != h.heap_address_bits)
    {
        if (drops.note(chunk::DROP_FLAVOUR_CHANGED))
            log_info("dropped packet of heap %lld: flavour changed", (long long) ph.heap_cnt);
        return false;
    }
    if (ph.heap_length >= 0)
    {
        if (h.heap_length >= 0 && ph.heap_length != h.heap_length)
        {
            if (drops.note(chunk::DROP_LENGTH_CHANGED))
                log_info("dropped packet of heap %lld: heap length changed", (long long) ph.heap_cnt);
            return false;
        }
        if (std::uint64_t(ph.heap_length) < h.min_length)
        {
            if (drops.note(chunk::DROP_TOO_SMALL))
                log_info("dropped packet of heap %lld: heap length too small for its items",
                         (long long) ph.heap_cnt);
            return false;
        }
    }
    const std::uint64_t start = std::uint64_t(ph.payload_offset);
    const std::uint64_t end = start + std::uint64_t(ph.payload_length);
    // Make room first, so that a failed allocation drops the packet and leaves
    // the heap as it was.  As in the reference, a packet may run past an
    // announced HEAP_LENGTH: the buffer then grows (the heap is still
    // delivered whole if every byte up to its end arrives).
    try
    {
        if (ph.heap_length >= 0 && h.heap_length < 0)
            data.payload.reserve(allocator, std::size_t(ph.heap_length), true);
        if (end > data.payload.capacity())
            data.payload.reserve(allocator, std::size_t(end), false);
    }
    catch (std::bad_alloc &)
    {
        log_warning("dropped packet of heap %lld: could not allocate %llu bytes of payload",
                    (long long) ph.heap_cnt, (unsigned long long) end);
        return false;
    }
    if (!allow_out_of_order)
    {
        if (start != h.received)
        {
            if (start < h.received)
            {
                if (drops.note(chunk::DROP_OUT_OF_ORDER))
                    log_warning("dropped packet of heap %lld: out-of-order packet (offset %llu, expected %llu)",
                                (long long) ph.heap_cnt, (unsigned long long) start,
                                (unsigned long long) h.received);
            }
            else if (drops.note(chunk::DROP_GAP))
                log_debug("dropped packet of heap %lld: gap in heap", (long long) ph.heap_cnt);
            return false;
        }
    }
    else if (ph.payload_length > 0)
    {
        switch (h.ranges.insert(start, end))
        {
        case range_set::result::added:
            break;
        case range_set::result::duplicate:
            if (drops.note(chunk::DROP_DUPLICATE))
                log_debug("dropped duplicate packet of heap %lld", (long long) ph.heap_cnt);
            return false;
        case range_set::result::overlap:
            if (drops.note(chunk::DROP_OVERLAP))
                log_warning("dropped packet of heap %lld: overlaps data already received",
                            (long long) ph.heap_cnt);
            return false;
        }
    }

    // Accepted.
    if (ph.heap_length >= 0 && h.heap_length < 0)
        h.heap_length = ph.heap_length;
    h.min_length = std::max({h.min_length, end, std::uint64_t(std::max<std::int64_t>(ph.heap_length, 0))});
    h.received += std::uint64_t(ph.payload_length);

    const int hab = ph.heap_address_bits;
    for (int i = 0; i < ph.n_items; i++)
    {
        const std::uint64_t raw = protocol::load_be64(ph.pointers + i * protocol::ITEM_POINTER_SIZE);
        const auto ptr = protocol::decode_item_pointer(raw, hab);
        if (ptr.id >= protocol::HEAP_CNT_ID && ptr.id <= protocol::PAYLOAD_LENGTH_ID)
            continue;
        if (ptr.immediate)
        {
            if (ptr.id == protocol::STREAM_CTRL_ID && ptr.value == protocol::CTRL_STREAM_STOP)
                h.stop_item = true;
        }
        else if (ptr.value > h.min_length)
            h.min_length = ptr.value;   // only bounds the heap: bytes come with packets
        if (std::find(data.pointers.begin(), data.pointers.end(), raw) == data.pointers.end())
            data.pointers.push_back(raw);
    }
    if (ph.payload_length > 0)
        copy(data.payload.data() + start, ph.payload, std::size_t(ph.payload_length));
    return true;
}

void heap_stream::heap_ready(std::size_t slot)
{
    // The heap leaves the table here (its fields are read first).
    const live_heap &h = table[slot];
    const std::int64_t cnt = h.cnt;
    table.unlink(slot);   // clears only cnt and the hash link
    std::unique_ptr<received_heap> out = std::move(building[slot]);
    statistics.counters.heaps++;
    out->cnt = cnt;
    out->heap_length = h.heap_length;
    out->received_length = h.received;
    out->min_length = h.min_length;
    out->heap_address_bits = h.heap_address_bits;
    out->bug_compat = bug_compat;
    out->contiguous = h.received == h.min_length;
    out->complete = h.heap_length >= 0 && out->contiguous && h.min_length == std::uint64_t(h.heap_length);
    out->end_of_stream = h.stop_item;
    if (!out->contiguous)
    {
        if (ring_config.get_contiguous_only())
        {
            if (drops.note(chunk::DROP_INCOMPLETE_HEAP))
                log_warning("dropped incomplete heap %lld (%llu/%lld bytes of payload)",
                            (long long) cnt, (unsigned long long) h.received, (long long) h.heap_length);
            return;
        }
        out->payload.reset();   // incomplete heaps keep only their immediates
        if (ring_config.get_incomplete_keep_payload_ranges())
        {
            if (allow_out_of_order)
                for (std::size_t i = 0; i < h.ranges.size(); i++)
                    out->payload_ranges.push_back(h.ranges[i]);
            else if (h.received > 0)
                out->payload_ranges.emplace_back(0, h.received);
        }
    }
    push(std::move(out));
}

void heap_stream::push(std::unique_ptr<received_heap> &&h)
{
    try
    {
        try
        {
            ring->try_push(h);
        }
        catch (ringbuffer_full &)
        {
            {
                statistics.add(stat_index::worker_blocked, 1);
            }
            ring->push(h);
        }
    }
    catch (ringbuffer_stopped &)
    {
        log_info("dropped heap %lld due to external stop", (long long) h->cnt);
    }
}

void heap_stream::flush_heaps()
{
    table.for_each_live([this](std::size_t slot) {
        statistics.counters.flushed++;
        heap_ready(slot);
    });
}

} // namespace spead2::heap
