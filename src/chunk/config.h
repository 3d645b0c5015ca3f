// Configuration of a chunk stream: the stream part (StreamConfig), the
// statistics it keeps (StreamStatConfig), and the chunk part
// (ChunkStreamConfig), plus the C ABI shared with place callbacks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/memcpy.h"

namespace spead2::chunk
{

// ---------------------------------------------------------------- statistics

struct stat_config
{
    enum class mode { COUNTER, MAXIMUM };
    std::string name;
    mode kind = mode::COUNTER;

    stat_config() = default;
    stat_config(std::string name, mode kind = mode::COUNTER) : name(std::move(name)), kind(kind) {}
    std::uint64_t combine(std::uint64_t a, std::uint64_t b) const
    {
        return kind == mode::COUNTER ? a + b : (a > b ? a : b);
    }
    bool operator==(const stat_config &o) const { return name == o.name && kind == o.kind; }
    bool operator!=(const stat_config &o) const { return !(*this == o); }
};

/// Indices of the core statistics (every stream has them, in this order).
namespace stat_index
{
constexpr std::size_t heaps = 0;
constexpr std::size_t incomplete_heaps_evicted = 1;
constexpr std::size_t incomplete_heaps_flushed = 2;
constexpr std::size_t packets = 3;
constexpr std::size_t batches = 4;
constexpr std::size_t max_batch = 5;
constexpr std::size_t single_packet_heaps = 6;
constexpr std::size_t search_dist = 7;
constexpr std::size_t worker_blocked = 8;
constexpr std::size_t custom = 9;  ///< first user-defined statistic
}

/// Statistics that chunk streams append after the user's custom ones.
/// The first two match the reference; the last two are ours (safety).
constexpr const char *CHUNK_STAT_NAMES[] = {
    "too_old_heaps",      ///< heap belonged to a chunk that had already left the window
    "rejected_heaps",     ///< place callback returned a negative chunk_id
    "out_of_range_heaps", ///< placement would write outside the chunk's buffers; heap dropped
    "malformed_packets",  ///< datagrams/frames dropped by the packet or frame decoder
};
constexpr std::size_t N_CHUNK_STATS = 4;

std::vector<stat_config> default_stats();

// ------------------------------------------------------------ stream config

constexpr std::size_t DEFAULT_MAX_HEAPS = 4;

class stream_config
{
    std::size_t max_heaps = DEFAULT_MAX_HEAPS;
    std::size_t substreams = 1;
    int bug_compat = 0;
    int memcpy_id = MEMCPY_STD;
    bool stop_on_stop_item = true;
    bool allow_unsized_heaps = true;
    bool allow_out_of_order = false;
    std::uintptr_t stream_id = 0;
    bool explicit_start = false;
    // Shared copy-on-write so that copies of a config never alias stats.
    std::shared_ptr<const std::vector<stat_config>> stats;

public:
    stream_config();

    stream_config &set_max_heaps(std::size_t v);
    std::size_t get_max_heaps() const { return max_heaps; }
    stream_config &set_substreams(std::size_t v);
    std::size_t get_substreams() const { return substreams; }
    stream_config &set_bug_compat(int v);
    int get_bug_compat() const { return bug_compat; }
    stream_config &set_memcpy(int id);
    int get_memcpy() const { return memcpy_id; }
    stream_config &set_stop_on_stop_item(bool v) { stop_on_stop_item = v; return *this; }
    bool get_stop_on_stop_item() const { return stop_on_stop_item; }
    stream_config &set_allow_unsized_heaps(bool v) { allow_unsized_heaps = v; return *this; }
    bool get_allow_unsized_heaps() const { return allow_unsized_heaps; }
    stream_config &set_allow_out_of_order(bool v) { allow_out_of_order = v; return *this; }
    bool get_allow_out_of_order() const { return allow_out_of_order; }
    stream_config &set_stream_id(std::uintptr_t v) { stream_id = v; return *this; }
    std::uintptr_t get_stream_id() const { return stream_id; }
    stream_config &set_explicit_start(bool v) { explicit_start = v; return *this; }
    bool get_explicit_start() const { return explicit_start; }

    const std::vector<stat_config> &get_stats() const { return *stats; }
    /// Add a statistic; returns its index.  Duplicate names → std::invalid_argument.
    std::size_t add_stat(const std::string &name, stat_config::mode mode = stat_config::mode::COUNTER);
    /// Index of a named statistic; unknown → std::out_of_range.
    std::size_t get_stat_index(const std::string &name) const;
    std::size_t next_stat_index() const { return stats->size(); }
};

// ------------------------------------------------------- place callback ABI

/// Exactly the reference's layout: fields may only ever be appended.
struct chunk_place_data
{
    const std::uint8_t *packet;
    std::size_t packet_size;
    std::int64_t *items;
    std::int64_t chunk_id;
    std::size_t heap_index;
    std::size_t heap_offset;
    std::uint64_t *batch_stats;
    std::uint8_t *extra;
    std::size_t extra_offset;
    std::size_t extra_size;
};
static_assert(sizeof(chunk_place_data) == 80, "chunk_place_data must match the reference ABI");

/// The place callback, as a plain function pointer plus context.
struct place_function
{
    enum class kind { none, plain, with_context };
    kind type = kind::none;
    void *fn = nullptr;       ///< void (*)(void *, size_t) or void (*)(void *, size_t, void *)
    void *context = nullptr;

    explicit operator bool() const { return type != kind::none && fn; }
    void operator()(chunk_place_data *data) const
    {
        if (type == kind::plain)
            reinterpret_cast<void (*)(void *, std::size_t)>(fn)(data, sizeof(*data));
        else
            reinterpret_cast<void (*)(void *, std::size_t, void *)>(fn)(data, sizeof(*data), context);
    }
};

constexpr std::size_t DEFAULT_MAX_CHUNKS = 2;

class chunk_stream_config
{
    std::vector<std::uint64_t> items;
    std::size_t max_chunks = DEFAULT_MAX_CHUNKS;
    place_function place;
    std::size_t max_heap_extra = 0;
    std::size_t packet_presence_payload_size = 0;

public:
    chunk_stream_config &set_items(std::vector<std::uint64_t> v) { items = std::move(v); return *this; }
    const std::vector<std::uint64_t> &get_items() const { return items; }
    chunk_stream_config &set_max_chunks(std::size_t v);
    std::size_t get_max_chunks() const { return max_chunks; }
    chunk_stream_config &set_place(place_function f) { place = f; return *this; }
    const place_function &get_place() const { return place; }
    chunk_stream_config &set_max_heap_extra(std::size_t v) { max_heap_extra = v; return *this; }
    std::size_t get_max_heap_extra() const { return max_heap_extra; }
    chunk_stream_config &enable_packet_presence(std::size_t payload_size);
    chunk_stream_config &disable_packet_presence() { packet_presence_payload_size = 0; return *this; }
    std::size_t get_packet_presence_payload_size() const { return packet_presence_payload_size; }
};

// -------------------------------------------------------------------- chunk

/// A chunk: the destination of many heaps.  Buffers are owned by whoever
/// made the chunk (a subclass); the core only reads pointers and sizes.
struct chunk
{
    std::int64_t chunk_id = -1;
    std::uintptr_t stream_id = 0;
    std::uint8_t *present = nullptr;
    std::size_t present_size = 0;
    std::uint8_t *data = nullptr;
    std::size_t data_size = 0;
    std::uint8_t *extra = nullptr;
    std::size_t extra_size = 0;
    /// When the first and the last packet written into the chunk arrived, in
    /// ns (the transport's clock: CLOCK_MONOTONIC for live transports, the
    /// capture time for pcap replay).  While none has: NO_FIRST_PACKET_TIME
    /// and -1, so that each packet updates them with a branch-free min/max
    /// (the Python Chunk shows -1 for both).
    static constexpr std::int64_t NO_FIRST_PACKET_TIME = std::numeric_limits<std::int64_t>::max();
    std::int64_t first_packet_time = NO_FIRST_PACKET_TIME;
    std::int64_t last_packet_time = -1;

    chunk() = default;
    chunk(const chunk &) = delete;
    chunk &operator=(const chunk &) = delete;
    virtual ~chunk() = default;
};

} // namespace spead2::chunk
