// Chunk stream groups: several streams filling one sequence of chunks.
//
// Each member is an ordinary chunk stream (own readers, own live-heap table,
// own statistics, usually its own one-thread pool) with its own window of
// chunk pointers.  It takes no lock per heap: only moving its window goes
// through the group.  The group owns the chunks, in a window of at most
// max_chunks (the group window), and releases a chunk (ready callback) once
// every member's window has moved past it; a stopped member counts as being
// infinitely far ahead.
//
// When a member needs a chunk more than max_chunks ahead of the group head,
// it waits until the group head catches up.  In LOSSY mode it first asks
// every member (asynchronously, on that member's thread) to release chunks
// up to the one it needs, so a lagging or silent member loses its incomplete
// chunks; in LOSSLESS mode it just waits for the others to move on their own.
//
// Threading: a member's batch holds the member's lock and may take the group
// mutex; the group mutex is never held while taking a member's lock.  Every
// member needs a thread of its own: a flush request queued behind a blocked
// member on a shared thread cannot run.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "chunk/chunk_stream.h"
#include "chunk/chunk_window.h"
#include "chunk/config.h"

namespace spead2::chunk
{

enum class eviction_mode
{
    LOSSY,     ///< lagging members are made to release incomplete chunks
    LOSSLESS   ///< a chunk is ready only once every member has moved past it
};

class chunk_group_config
{
    std::size_t max_chunks = DEFAULT_MAX_CHUNKS;
    eviction_mode mode = eviction_mode::LOSSY;

public:
    /// Chunks under construction at once (0 → std::invalid_argument).
    chunk_group_config &set_max_chunks(std::size_t v);
    std::size_t get_max_chunks() const { return max_chunks; }
    chunk_group_config &set_eviction_mode(eviction_mode m) { mode = m; return *this; }
    eviction_mode get_eviction_mode() const { return mode; }
};

class chunk_group;

/// One stream of a group.  Made only by chunk_group::emplace_back.
class chunk_group_member : public chunk_stream
{
    friend class chunk_group;

    chunk_group &group;
    const std::size_t index;
    worker &flush_worker;   ///< where the group's flush requests run

    /// Ask this member (asynchronously) to release chunks before @a target.
    void request_flush_until(std::uint64_t target);
    /// Wait until flush requests already queued have run.
    void drain_requests();

protected:
    chunk *acquire_chunk(std::int64_t chunk_id) override;
    void release_chunk(chunk *) override {}   // the group releases chunks
    void head_moved(std::uint64_t head) override;
    void network_stop_hook() override;

public:
    chunk_group_member(chunk_group &group, std::size_t index,
                       std::shared_ptr<thread_pool> pool,
                       const stream_config &config,
                       const chunk_stream_config &chunk_config);
    ~chunk_group_member() override;

    std::size_t get_index() const { return index; }
    chunk_group &get_group() const { return group; }

    /// Stopping a member stops the whole group (as in the reference).
    void stop() override;
};

class chunk_group
{
    friend class chunk_group_member;

    const chunk_group_config config;
    allocate_function allocate;
    ready_function ready;

    std::mutex mutex;
    std::condition_variable head_advanced;
    chunk_window window;                         ///< guarded by mutex
    std::vector<std::uint64_t> member_heads;     ///< guarded by mutex
    std::uint64_t last_flush_until = 0;          ///< guarded by mutex
    bool stopping = false;                       ///< guarded by mutex
    // Health, written with the mutex held and read without it: a member may
    // hold the mutex while it blocks on the free ring (in get_chunk), and
    // the thread that would give it a chunk back may be asking for health.
    std::atomic<std::uint64_t> health_head{0};
    std::atomic<std::uint64_t> health_tail{0};
    std::atomic<std::uint64_t> lossy_flushes{0};
    std::atomic<std::uint64_t> member_waits{0};
    /// Publish the window's head and tail to health_* (mutex held).
    void publish_window();
    std::vector<std::unique_ptr<chunk_group_member>> members;  ///< changed by the user only

    /// A chunk for a member (called with the member's lock held).
    chunk *get_chunk(std::uint64_t chunk_id, std::uintptr_t stream_id, std::uint64_t *batch_stats);
    /// Whether a member's thread pool has been stopped (group mutex held).
    bool any_pool_stopped() const;
    /// A member's window head moved (called with the member's lock held).
    void member_head_moved(std::size_t index, std::uint64_t head, std::uint64_t *batch_stats);

protected:
    /// A member was added (group mutex held).
    virtual void member_added(chunk_group_member &) {}
    /// A member stopped because of its data (stop item, end of input).
    virtual void member_network_stopped(chunk_group_member &) {}

public:
    chunk_group(const chunk_group_config &config, allocate_function allocate, ready_function ready);
    virtual ~chunk_group();
    chunk_group(const chunk_group &) = delete;
    chunk_group &operator=(const chunk_group &) = delete;

    const chunk_group_config &get_config() const { return config; }

    /// Add a member.  Throws std::invalid_argument if its max_chunks exceeds
    /// the group's, std::runtime_error once data has arrived or after stop.
    chunk_group_member &emplace_back(std::shared_ptr<thread_pool> pool,
                                     const stream_config &config,
                                     const chunk_stream_config &chunk_config);
    std::size_t size() const { return members.size(); }
    chunk_group_member &operator[](std::size_t i) { return *members[i]; }

    /// How the group window is doing.
    struct health
    {
        std::uint64_t head;             ///< oldest chunk ID still in the window
        std::size_t chunks_in_window;   ///< chunks under construction
        std::uint64_t lossy_flushes;    ///< LOSSY: times the members were told to let chunks go
        std::uint64_t member_waits;     ///< times a member waited for the others to move on
    };
    /// Never blocks (see health_head).
    health get_health() const;

    /// Stop every member and release every chunk (idempotent; any thread).
    virtual void stop();
};

} // namespace spead2::chunk
