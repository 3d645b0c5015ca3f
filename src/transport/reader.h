// The interface between transports and the stream core.
//
// A transport decodes what it receives into protocol::packet_header records
// and hands them to a packet_sink in batches.  One batch corresponds to one
// wake-up of the transport (a recvmmsg call, a run of frames from a file, a
// whole memory buffer); the sink takes its lock once per batch.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/memcpy.h"
#include "common/prefetch.h"
#include "protocol/spead.h"

namespace spead2
{
class worker;
}

namespace spead2::transport
{

class packet_sink
{
public:
    virtual ~packet_sink() = default;
    /// Start a batch (takes the sink's lock).  Returns false if the stream
    /// has stopped, in which case the batch must not be continued.
    virtual bool batch_begin() = 0;
    /// Add decoded packets.  Returns false once the stream has stopped (the
    /// rest of the batch must then be dropped).
    virtual bool batch_packets(const protocol::packet_header *packets, std::size_t n) = 0;
    /// Count packets the transport had to drop as malformed.
    virtual void batch_malformed(std::size_t n) = 0;
    /// End the batch (releases the lock).  @a end_of_stream stops the stream
    /// as a network stop (EOF, queue stopped).
    virtual void batch_end(bool end_of_stream) = 0;
};

/// RAII helper for a batch.
class batch
{
    packet_sink &sink;
    bool open;
    bool eos = false;
public:
    explicit batch(packet_sink &sink) : sink(sink), open(sink.batch_begin()) {}
    ~batch() { if (open) sink.batch_end(eos); }
    batch(const batch &) = delete;
    batch &operator=(const batch &) = delete;
    bool active() const { return open; }
    bool add(const protocol::packet_header *packets, std::size_t n) { return sink.batch_packets(packets, n); }
    void malformed(std::size_t n) { sink.batch_malformed(n); }
    void end_of_stream() { eos = true; }
};

/// Number of decoded headers a transport gathers before handing them over.
constexpr std::size_t PACKET_GROUP = 64;

// The pcap and buffer readers, which walk packets laid out one after the
// other, prefetch whole packets about PREFETCH_DISTANCE bytes ahead of the one
// being handled, so the cache misses overlap with the work on this packet
// (bench/bench_chunk.py: pcap replay of 1 KiB heaps 1.05-1.1x the packet rate
// of no prefetch on an AMD EPYC VM; from memory 1.1-1.2x for 1 KiB and 64 KiB
// heaps on an Intel Xeon VM, so the buffer reader does it on Intel CPUs only:
// mem_reader.cpp).  Not packets of PREFETCH_MAX_PACKET bytes or
// more, the size from which payloads are copied with glibc's memcpy
// (common/memcpy.h), which streams its source well by itself: 8 KiB heaps
// replayed 1.19-1.30x faster without the prefetch (doc/benchmarking.rst).
constexpr std::size_t PREFETCH_DISTANCE = 2048;
constexpr std::size_t PREFETCH_MAX_AHEAD = 4;        ///< packets
constexpr std::size_t PREFETCH_MAX_PACKET = MEMCPY_STD_LIBC_MIN;   ///< bytes

/// Prefetch a whole packet about PREFETCH_DISTANCE bytes beyond @a next (the
/// start of the packet after the current one), assuming packets of
/// @a packet_size bytes follow each other; never touches @a end or beyond.
/// Nothing for packets of PREFETCH_MAX_PACKET bytes or more.
inline void prefetch_ahead(const std::uint8_t *next, std::size_t packet_size, const std::uint8_t *end)
{
    if (packet_size == 0 || packet_size >= PREFETCH_MAX_PACKET || next >= end)
        return;
    std::size_t ahead = (PREFETCH_DISTANCE + packet_size - 1) / packet_size;
    ahead = ahead < 1 ? 1 : (ahead > PREFETCH_MAX_AHEAD ? PREFETCH_MAX_AHEAD : ahead);
    if (std::size_t(end - next) / packet_size <= ahead)
        return;   // fewer than ahead + 1 whole packets left: the target would pass the end
    prefetch_range(next + ahead * packet_size, packet_size);
}

/// Base class of readers.  A reader is owned (through shared_ptr, so that
/// tasks it posted can keep it alive) by its stream and bound to one worker.
class reader : public std::enable_shared_from_this<reader>
{
protected:
    packet_sink &sink;
    worker &thread;
    std::atomic<bool> stopping{false};
public:
    reader(packet_sink &sink, worker &thread) : sink(sink), thread(thread) {}
    virtual ~reader() = default;
    /// Begin delivering packets (called once, from any thread).
    virtual void start() = 0;
    /// Ask the reader to stop; safe from any thread, including inside a batch.
    /// After it returns no new batch is begun by this reader.
    void request_stop() { stopping.store(true); on_stop_requested(); }
    /// Release resources; called on a user thread after request_stop, once no
    /// callback can be running.  Default: nothing.
    virtual void close() {}
    bool is_stopping() const { return stopping.load(); }
    worker &get_worker() { return thread; }
protected:
    /// Hook for readers registered with the reactor (remove the fd).
    virtual void on_stop_requested() {}
};

} // namespace spead2::transport
