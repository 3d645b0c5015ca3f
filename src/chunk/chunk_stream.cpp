#include "chunk/chunk_stream.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "common/logging.h"
#include "protocol/spead.h"
#include "common/prefetch.h"

namespace spead2::chunk
{

using protocol::packet_header;

namespace
{

// How much of the next packet's payload to prefetch while handling a packet.
constexpr std::size_t PREFETCH_BYTES = 2048;
// Which later packet of a multi-packet heap has its destination prefetched.
constexpr std::uint64_t DEST_PREFETCH_PACKETS = 2;
// Packets with more payload than this are not prefetched for: the copy of a
// large packet streams well by itself, and a burst of a hundred prefetchw
// instructions only fills the miss queue ahead of it.  Measured (64 KiB heaps
// from memory, with / without): 1472-byte packets 1.4-1.7x faster, 4 KiB
// packets no difference, 8 KiB packets 7-9% slower (and more receiver CPU per
// packet over kernel UDP).
constexpr std::uint64_t DEST_PREFETCH_MAX_PAYLOAD = 4096;

stream_config effective_config(const stream_config &user)
{
    stream_config c = user;
    c.set_allow_unsized_heaps(false);
    for (const char *name : CHUNK_STAT_NAMES)
        c.add_stat(name);
    return c;
}

} // anonymous namespace

chunk_stream::chunk_stream(std::shared_ptr<thread_pool> pool,
                           const stream_config &user_config,
                           const chunk_stream_config &chunk_config,
                           allocate_function allocate,
                           ready_function ready)
    : pool(std::move(pool)),
      config(effective_config(user_config)),
      chunk_config(chunk_config),
      allocate(std::move(allocate)),
      ready(std::move(ready)),
      copy(memcpy_by_id(user_config.get_memcpy(), true)),   // the chunk window fences (chunk_window.h)
      dest_prefetch_max_payload(user_config.get_memcpy() == MEMCPY_NONTEMPORAL ? 0 : DEST_PREFETCH_MAX_PAYLOAD),
      presence_payload_size(chunk_config.get_packet_presence_payload_size()),
      max_heaps(user_config.get_max_heaps()),
      substreams(user_config.get_substreams()),
      allow_out_of_order(user_config.get_allow_out_of_order()),
      stop_on_stop_item(user_config.get_stop_on_stop_item()),
      stream_id(user_config.get_stream_id()),
      heaps(max_heaps, substreams),
      statistics(config.get_stats()),
      window(chunk_config.get_max_chunks()),
      drops(make_drop_log()),
      readers(user_config.get_explicit_start())
{
    if (!this->pool)
        throw std::invalid_argument("thread_pool must not be None");
    if (!chunk_config.get_place())
        throw std::invalid_argument("chunk_config.place is not set");
    if (!this->allocate || !this->ready)
        throw std::invalid_argument("allocate and ready callbacks must be set");
    first_chunk_stat = config.get_stat_index(CHUNK_STAT_NAMES[0]);

    item_values.assign(chunk_config.get_items().size(), -1);
    item_keys.assign(chunk_config.get_items().size(), 0);
    extra_scratch.assign(chunk_config.get_max_heap_extra(), 0);
}

chunk_stream::~chunk_stream()
{
    chunk_stream::stop();
}

// ------------------------------------------------------------------ readers

bool chunk_stream::add_reader(const transport::reader_factory &factory)
{
    return readers.add(factory, *this, *pool, stopped.load());
}

void chunk_stream::start()
{
    readers.start(stopped.load());
}

void chunk_stream::stop_readers()
{
    readers.close();
}

void chunk_stream::stop()
{
    {
        std::lock_guard<std::mutex> lock(queue_mutex);
        if (!stopped.load())
        {
            // User stop: chunks leave first, then the live heaps (which then
            // no longer have a chunk to mark).
            flush_chunks();
            stopped.store(true);
            flush_heaps();
            merge_batch();
            drops.summarise(true);
            protocol::summarise_decode_log(true);
        }
    }
    stop_readers();
}

void chunk_stream::stop_received()
{
    if (stopped.load())
        return;
    stopped.store(true);
    stopped_in_batch = true;
    flush_heaps();
    flush_chunks();
    drops.summarise(true);
    protocol::summarise_decode_log(true);
    readers.request_stop();
    // The hook (e.g. ending the data ring) waits until the statistics of this
    // batch are merged, so a consumer that sees the end also sees final stats.
    network_stop_pending = true;
}

// -------------------------------------------------------------- statistics

std::vector<std::uint64_t> chunk_stream::get_stats() const
{
    return statistics.snapshot();
}

void chunk_stream::merge_batch()
{
    // The chunk statistics come after the user's custom ones (callback
    // writes to them were merged with the custom ones).
    statistics.merge([this](std::vector<std::uint64_t> &totals) {
        totals[first_chunk_stat + 0] += chunk_counts.too_old;
        totals[first_chunk_stat + 1] += chunk_counts.rejected;
        totals[first_chunk_stat + 2] += chunk_counts.out_of_range;
        totals[first_chunk_stat + 3] += chunk_counts.malformed;
    });
    chunk_counts = chunk_counters();
}

// ------------------------------------------------------------------ batches

bool chunk_stream::batch_begin()
{
    queue_mutex.lock();
    if (stopped.load())
    {
        queue_mutex.unlock();
        return false;
    }
    batch_packet_count = 0;
    stopped_in_batch = false;
    batch_time = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
    return true;
}

bool chunk_stream::batch_packets(const packet_header *packets, std::size_t n)
{
    for (std::size_t i = 0; i < n; i++)
    {
        if (stopped.load(std::memory_order_relaxed))
            return false;
        if (i + 1 < n)
        {
            // The next packet is usually not in cache yet: fetch its header and
            // the start of its payload while this one is copied.
            const packet_header &next = packets[i + 1];
            prefetch_line(next.packet);
            prefetch_range(next.payload, std::min<std::size_t>(std::size_t(next.payload_length), PREFETCH_BYTES));
        }
        batch_packet_count++;
        process_packet(packets[i]);
    }
    return !stopped.load(std::memory_order_relaxed);
}

void chunk_stream::batch_malformed(std::size_t n)
{
    chunk_counts.malformed += n;
}

void chunk_stream::batch_end(bool end_of_stream)
{
    if (end_of_stream)
        stop_received();
    const bool count_batch = !(stopped_in_batch && batch_packet_count == 0);
    if (count_batch)
        statistics.count_batch(batch_packet_count);
    merge_batch();
    drops.summarise();
    protocol::summarise_decode_log();
    if (network_stop_pending)
    {
        network_stop_pending = false;
        network_stop_hook();
    }
    queue_mutex.unlock();
}

// ------------------------------------------------------------ heap assembly

std::size_t chunk_stream::claim_slot(std::int64_t cnt)
{
    const std::size_t slot = heaps.next_slot(cnt);
    live_heap &h = heaps[slot];
    if (h.cnt >= 0)
    {
        // FIFO eviction: the oldest heap of this substream makes room.
        heaps.unlink(slot);
        statistics.counters.evicted++;
        heap_done(h, false);
    }
    return slot;
}

std::size_t chunk_stream::new_heap(const packet_header &ph)
{
    const std::size_t slot = claim_slot(ph.heap_cnt);
    live_heap &h = heaps[slot];
    h.cnt = ph.heap_cnt;
    h.heap_length = ph.heap_length;
    h.received = 0;
    h.min_length = 0;
    h.heap_address_bits = ph.heap_address_bits;
    h.stop_item = false;
    h.placed = false;
    h.where = heap_placement();
    h.ranges.clear();
    heaps.link(slot);
    return slot;
}

void chunk_stream::process_packet(const packet_header &ph)
{
    statistics.counters.packets++;
    if (ph.heap_length < 0)
    {
        if (drops.note(DROP_UNSIZED))
            log_debug("dropped packet of heap %lld: no HEAP_LENGTH (unsized heaps are not allowed)",
                      (long long) ph.heap_cnt);
        return;
    }
    if (ph.payload_length == ph.heap_length)
    {
        process_single(ph);
        return;
    }

    std::int32_t found = heaps.find(ph.heap_cnt, statistics.counters.search_dist);
    if (found < 0)
    {
        if (!allow_out_of_order && ph.payload_offset != 0)
        {
            if (drops.note(DROP_FIRST_OFFSET))
                log_debug("dropped packet of heap %lld: first packet has non-zero offset",
                          (long long) ph.heap_cnt);
            return;
        }
        found = std::int32_t(new_heap(ph));
    }
    live_heap &h = heaps[found];
    if (ph.heap_length != h.heap_length)
    {
        if (drops.note(DROP_LENGTH_CHANGED))
            log_info("dropped packet of heap %lld: heap length changed", (long long) ph.heap_cnt);
        return;
    }
    if (ph.heap_address_bits != h.heap_address_bits)
    {
        if (drops.note(DROP_FLAVOUR_CHANGED))
            log_info("dropped packet of heap %lld: flavour changed", (long long) ph.heap_cnt);
        return;
    }
    if (h.min_length > std::uint64_t(h.heap_length))
    {
        // An earlier packet of this heap had an item address beyond
        // HEAP_LENGTH: the heap can never complete (as in the reference).
        if (drops.note(DROP_TOO_SMALL))
            log_info("dropped packet of heap %lld: heap length too small for its items",
                     (long long) ph.heap_cnt);
        return;
    }
    const std::uint64_t max_address = ph.max_address;
    const bool stop_flag = ph.stop;
    const std::uint64_t start = std::uint64_t(ph.payload_offset);
    const std::uint64_t end = start + std::uint64_t(ph.payload_length);
    // The packet's own item addresses do not reject it; they only make the
    // heap incomplete if they point beyond HEAP_LENGTH.
    const std::uint64_t new_min = std::max({h.min_length, max_address, std::uint64_t(h.heap_length)});
    if (!allow_out_of_order)
    {
        if (start != h.received)
        {
            if (start < h.received)
            {
                if (drops.note(DROP_OUT_OF_ORDER))
                    log_warning("dropped packet of heap %lld: out-of-order packet (offset %llu, expected %llu)",
                                (long long) ph.heap_cnt, (unsigned long long) start,
                                (unsigned long long) h.received);
            }
            else if (drops.note(DROP_GAP))
                log_debug("dropped packet of heap %lld: gap in heap", (long long) ph.heap_cnt);
            return;
        }
    }
    else if (ph.payload_length > 0)
    {
        switch (h.ranges.insert(start, end))
        {
        case range_set::result::added:
            break;
        case range_set::result::duplicate:
            if (drops.note(DROP_DUPLICATE))
                log_debug("dropped duplicate packet of heap %lld", (long long) ph.heap_cnt);
            return;
        case range_set::result::overlap:
            if (drops.note(DROP_OVERLAP))
                log_warning("dropped packet of heap %lld: overlaps data already received",
                            (long long) ph.heap_cnt);
            return;
        }
    }

    // Accepted
    h.min_length = new_min;
    h.received += std::uint64_t(ph.payload_length);
    h.stop_item |= stop_flag;
    if (!h.placed)
    {
        h.placed = true;
        h.where = place(ph);
    }
    copy_payload(h.where, ph);
    const bool complete = h.received == std::uint64_t(h.heap_length)
                          && h.min_length == std::uint64_t(h.heap_length);
    if (!complete)
        prefetch_next_destination(h, end, std::uint64_t(ph.payload_length));
    if (complete)
    {
        heaps.unlink(found);
        if (!(h.stop_item && stop_on_stop_item))
            heap_done(h, true);
    }
    if (h.stop_item && stop_on_stop_item)
        stop_received();
}

void chunk_stream::process_single(const packet_header &ph)
{
    // A heap in one packet is never looked up (so a duplicate is delivered
    // twice), but, as in the reference, it still takes the next slot of its
    // substream, evicting the heap that held it.
    statistics.counters.single_packet_heaps++;
    const std::size_t slot = claim_slot(ph.heap_cnt);
    const std::uint64_t max_address = ph.max_address;
    const bool stop_flag = ph.stop;
    heap_placement where;
    if (ph.heap_length > 0)
    {
        where = place(ph);
        copy_payload(where, ph);
        prefetch_next_single(where, std::uint64_t(ph.payload_length));
    }
    const bool stop = stop_flag && stop_on_stop_item;
    if (max_address <= std::uint64_t(ph.heap_length))
    {
        if (!stop)
        {
            statistics.counters.heaps++;
            mark_complete(where);
        }
        // else: a complete stop heap is discarded
    }
    else
    {
        // An item address beyond HEAP_LENGTH: the heap cannot complete and
        // stays live in its slot until it is evicted or flushed.
        if (drops.note(DROP_TOO_SMALL))
            log_info("heap %lld can never complete: heap length too small for its items",
                     (long long) ph.heap_cnt);
        live_heap &h = heaps[slot];
        h.cnt = ph.heap_cnt;
        h.heap_length = ph.heap_length;
        h.received = std::uint64_t(ph.payload_length);
        h.min_length = max_address;
        h.heap_address_bits = ph.heap_address_bits;
        h.stop_item = stop_flag;
        h.placed = true;
        h.where = where;
        h.ranges.clear();
        if (allow_out_of_order && ph.payload_length > 0)
            h.ranges.insert(0, std::uint64_t(ph.payload_length));
        heaps.link(slot);
    }
    if (stop)
        stop_received();
}

void chunk_stream::heap_done(live_heap &h, bool complete)
{
    statistics.counters.heaps++;
    if (complete)
        mark_complete(h.where);
}

void chunk_stream::flush_heaps()
{
    heaps.for_each_live([this](std::size_t slot) {
        live_heap &h = heaps[slot];
        heaps.unlink(slot);
        statistics.counters.flushed++;
        heap_done(h, false);
    });
}

// ----------------------------------------------------------------- placement

chunk *chunk_stream::acquire_chunk(std::int64_t chunk_id)
{
    return allocate(chunk_id, statistics.batch.data()).release();
}

void chunk_stream::release_chunk(chunk *c)
{
    ready(std::unique_ptr<chunk>(c), statistics.batch.data());
}

void chunk_stream::flush_chunks()
{
    window.flush_until(chunk_window::END,
                       [this](chunk *c) { release_chunk(c); },
                       [this](std::uint64_t h) { head_moved(h); });
}

void chunk_stream::flush_window_until(std::uint64_t target)
{
    std::lock_guard<std::mutex> lock(queue_mutex);
    if (stopped.load())
        return;
    window.flush_until(target,
                       [this](chunk *c) { release_chunk(c); },
                       [this](std::uint64_t h) { head_moved(h); });
}

heap_placement chunk_stream::place(const packet_header &ph)
{
    heap_placement result;
    // Requested immediate items, from every pointer of the packet (specials included).
    const auto &wanted = chunk_config.get_items();
    const std::size_t n_wanted = wanted.size();
    if (n_wanted)
    {
        // Each wanted item as the top bits (immediate flag and ID) of its
        // pointer in this flavour, so that a pointer is matched by one mask
        // and one compare per wanted item, without decoding it.
        const int hab = ph.heap_address_bits;
        if (hab != item_keys_hab)
        {
            const int id_bits = 63 - hab;
            for (std::size_t j = 0; j < n_wanted; j++)
                item_keys[j] = (wanted[j] >> id_bits) != 0
                    ? 0   // the ID does not fit this flavour: never matches (a key has the top bit set)
                    : (std::uint64_t(1) << 63) | (wanted[j] << hab);
            item_keys_hab = hab;
        }
        const std::uint64_t value_mask = (std::uint64_t(1) << hab) - 1;
        const std::uint64_t *keys = item_keys.data();
        std::int64_t *values = item_values.data();
        std::fill_n(values, n_wanted, -1);
        const std::uint8_t *ptrs = ph.packet + protocol::HEADER_SIZE;
        for (int i = 0; i < ph.all_items; i++)
        {
            const std::uint64_t raw = protocol::load_be64(ptrs + i * protocol::ITEM_POINTER_SIZE);
            const std::uint64_t key = raw & ~value_mask;
            const std::int64_t value = std::int64_t(raw & value_mask);
            for (std::size_t j = 0; j < n_wanted; j++)
                values[j] = key == keys[j] ? value : values[j];   // the last match wins
        }
    }
    chunk_place_data &d = place_data;
    d.packet = ph.packet;
    d.packet_size = ph.size;
    d.items = wanted.empty() ? nullptr : item_values.data();
    d.chunk_id = -1;
    d.heap_index = 0;
    d.heap_offset = 0;
    d.batch_stats = statistics.batch.data();
    d.extra = extra_scratch.empty() ? nullptr : extra_scratch.data();
    d.extra_offset = 0;
    d.extra_size = 0;
    chunk_config.get_place()(&d);

    if (d.chunk_id < 0)
    {
        chunk_counts.rejected++;
        return result;
    }
    const std::uint64_t id = std::uint64_t(d.chunk_id);
    if (id < window.get_head())
    {
        chunk_counts.too_old++;
        return result;
    }
    if (id >= window.get_tail())
        window.extend_to(id, stream_id,
                         [this](std::uint64_t i) { return acquire_chunk(std::int64_t(i)); },
                         [this](chunk *old) { release_chunk(old); },
                         [this](std::uint64_t h) { head_moved(h); });
    chunk *c = window.get(id);
    if (!c)
        return result;   // no chunk could be allocated (free ring stopped)

    // Bounds checks: nothing may be written outside the chunk's buffers.
    const std::uint64_t length = std::uint64_t(ph.heap_length);
    const std::size_t last_index = presence_payload_size
        ? d.heap_index + (length - 1) / presence_payload_size
        : d.heap_index;
    const char *problem = nullptr;
    if (d.heap_offset > c->data_size || length > c->data_size - d.heap_offset)
        problem = "heap_offset + heap length exceeds the chunk's data";
    else if (d.heap_index >= c->present_size || last_index >= c->present_size || last_index < d.heap_index)
        problem = "heap_index is outside the chunk's present array";
    else if (d.extra_size > extra_scratch.size())
        problem = "extra_size exceeds max_heap_extra";
    else if (d.extra_size > 0
             && (d.extra_offset > c->extra_size || d.extra_size > c->extra_size - d.extra_offset))
        problem = "extra_offset + extra_size exceeds the chunk's extra buffer";
    if (problem)
    {
        if (drops.note(DROP_OUT_OF_RANGE))
            log_warning("dropped heap %lld placed in chunk %lld: %s (heap_index=%zu heap_offset=%zu "
                        "heap_length=%llu extra_offset=%zu extra_size=%zu)",
                        (long long) ph.heap_cnt, (long long) d.chunk_id, problem,
                        d.heap_index, d.heap_offset, (unsigned long long) length,
                        d.extra_offset, d.extra_size);
        chunk_counts.out_of_range++;
        // The heap keeps its chunk ID (so a completion after the chunk has
        // left the window still counts as too old, as in the reference) but
        // has no target: nothing of it is written.
        result.chunk_id = d.chunk_id;
        return result;
    }
    if (d.extra_size > 0)
        std::memcpy(c->extra + d.extra_offset, extra_scratch.data(), d.extra_size);
    result.chunk_id = d.chunk_id;
    result.heap_index = d.heap_index;
    result.heap_offset = d.heap_offset;
    result.target = c;
    return result;
}

inline void chunk_stream::copy_payload(const heap_placement &where, const packet_header &ph)
{
    if (!where.target || ph.payload_length <= 0 || behind_window(where.chunk_id))
        return;   // not placed (or out of range), or the chunk has left the window
    chunk *c = where.target;
    copy(c->data + where.heap_offset + ph.payload_offset, ph.payload, std::size_t(ph.payload_length));
    // Members of a group write the same chunk from their own threads, each
    // with its own clock readings: keep the earliest and the latest.
    const std::int64_t t = ph.time_ns >= 0 ? ph.time_ns : batch_time;
    c->first_packet_time = std::min(c->first_packet_time, t);
    c->last_packet_time = std::max(c->last_packet_time, t);
    if (presence_payload_size)
    {
        // No division for the first (or only) packet of a heap.
        const std::size_t offset = std::size_t(ph.payload_offset);
        c->present[where.heap_index + (offset ? offset / presence_payload_size : 0)] = 1;
    }
}

void chunk_stream::prefetch_next_destination(const live_heap &h, std::uint64_t end, std::uint64_t packet_payload)
{
    // Packets of a heap usually arrive in order with equal payloads: bring the
    // destination of the next one(s) into cache for writing now, so their
    // copies do not stall on read-for-ownership misses (large chunks do not
    // fit in cache).
    const heap_placement &where = h.where;
    if (packet_payload >= dest_prefetch_max_payload)
        return;
    if (!where.target || behind_window(where.chunk_id))
        return;
    const std::uint64_t length = std::uint64_t(h.heap_length);
    const std::uint64_t first = end + (DEST_PREFETCH_PACKETS - 1) * packet_payload;
    if (first >= length)
        return;
    const std::uint64_t size = std::min(packet_payload, length - first);
    prefetch_range_write(where.target->data + where.heap_offset + first, std::size_t(size));
}

void chunk_stream::prefetch_next_single(const heap_placement &where, std::uint64_t length)
{
    // Single-packet heaps usually land at a steady stride in their chunk (the
    // next heap index, or every N-th for a member of a group of N): predict
    // the next one's destination from the last two and fetch it for writing,
    // so that its copy does not wait for the lines (chunks larger than the
    // cache).  A wrong guess costs a few prefetches.  Not with
    // MEMCPY_NONTEMPORAL (dest_prefetch_max_payload is 0 then).
    chunk *c = where.target;
    if (!c || length >= dest_prefetch_max_payload)
    {
        last_single_target = nullptr;
        return;
    }
    const std::size_t offset = where.heap_offset;
    if (c == last_single_target && offset > last_single_offset)
    {
        const std::size_t next = offset + (offset - last_single_offset);
        if (next <= c->data_size && length <= c->data_size - next)
            prefetch_range_write(c->data + next, std::size_t(length));
    }
    last_single_target = c;
    last_single_offset = offset;
}

void chunk_stream::mark_complete(const heap_placement &where)
{
    if (where.chunk_id < 0)
        return;
    if (behind_window(where.chunk_id))
    {
        chunk_counts.too_old++;
        return;
    }
    if (!where.target)
        return;   // placed out of range: dropped
    if (!presence_payload_size)
        where.target->present[where.heap_index] = 1;
}

} // namespace spead2::chunk
