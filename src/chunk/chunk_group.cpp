#include "chunk/chunk_group.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace spead2::chunk
{

namespace
{
constexpr auto POOL_CHECK_INTERVAL = std::chrono::milliseconds(50);
}

chunk_group_config &chunk_group_config::set_max_chunks(std::size_t v)
{
    if (v == 0)
        throw std::invalid_argument("max_chunks cannot be 0");
    max_chunks = v;
    return *this;
}

// ------------------------------------------------------------------ member

namespace
{

// A member never calls these: its chunks come from the group (see the
// acquire/release overrides).
std::unique_ptr<chunk> no_allocate(std::int64_t, std::uint64_t *) { return nullptr; }
void no_ready(std::unique_ptr<chunk> &&c, std::uint64_t *) { c.release(); }

} // anonymous namespace

chunk_group_member::chunk_group_member(chunk_group &group, std::size_t index,
                                       std::shared_ptr<thread_pool> pool,
                                       const stream_config &config,
                                       const chunk_stream_config &chunk_config)
    : chunk_stream(pool, config, chunk_config, no_allocate, no_ready),
      group(group),
      index(index),
      flush_worker(pool->pick_worker())
{
}

chunk_group_member::~chunk_group_member()
{
    // Stop while this object's overrides still apply (the base destructor
    // would release borrowed chunks as if it owned them).
    chunk_stream::stop();
}

chunk *chunk_group_member::acquire_chunk(std::int64_t chunk_id)
{
    return group.get_chunk(std::uint64_t(chunk_id), get_stream_id(), get_batch_stats());
}

void chunk_group_member::head_moved(std::uint64_t head)
{
    group.member_head_moved(index, head, get_batch_stats());
}

void chunk_group_member::network_stop_hook()
{
    group.member_network_stopped(*this);
}

void chunk_group_member::stop()
{
    group.stop();
}

void chunk_group_member::request_flush_until(std::uint64_t target)
{
    // Runs later on this member's thread, under its lock; does nothing once
    // the member has stopped.  The group drains these before members die.
    flush_worker.post([this, target] { flush_window_until(target); });
}

void chunk_group_member::drain_requests()
{
    flush_worker.run_sync([] {});
}

// ------------------------------------------------------------------- group

chunk_group::chunk_group(const chunk_group_config &config, allocate_function allocate, ready_function ready)
    : config(config),
      allocate(std::move(allocate)),
      ready(std::move(ready)),
      window(config.get_max_chunks())
{
    if (!this->allocate || !this->ready)
        throw std::invalid_argument("allocate and ready callbacks must be set");
}

chunk_group::~chunk_group()
{
    chunk_group::stop();
    members.clear();
}

chunk_group_member &chunk_group::emplace_back(std::shared_ptr<thread_pool> pool,
                                              const stream_config &stream_cfg,
                                              const chunk_stream_config &chunk_cfg)
{
    if (!pool)
        throw std::invalid_argument("thread_pool must not be None");
    if (chunk_cfg.get_max_chunks() > config.get_max_chunks())
        throw std::invalid_argument("stream max_chunks must not be larger than group max_chunks");
    std::lock_guard<std::mutex> lock(mutex);
    if (stopping)
        throw std::runtime_error("Cannot add a stream to a group that has been stopped");
    if (window.get_tail() != 0 || last_flush_until != 0)
        throw std::runtime_error("Cannot add a stream after group has started receiving data");
    auto m = std::make_unique<chunk_group_member>(*this, members.size(), std::move(pool), stream_cfg, chunk_cfg);
    chunk_group_member &ref = *m;
    members.push_back(std::move(m));
    member_heads.push_back(0);
    member_added(ref);
    return ref;
}

chunk *chunk_group::get_chunk(std::uint64_t chunk_id, std::uintptr_t stream_id, std::uint64_t *batch_stats)
{
    std::unique_lock<std::mutex> lock(mutex);
    const std::size_t max_chunks = config.get_max_chunks();
    if (chunk_id >= window.get_head() && chunk_id - window.get_head() >= max_chunks)
    {
        // Chunks before target must leave the group window first.
        const std::uint64_t target = chunk_id - (max_chunks - 1);
        if (config.get_eviction_mode() == eviction_mode::LOSSY && target > last_flush_until)
        {
            for (auto &m : members)
                m->request_flush_until(target);
            last_flush_until = target;
            lossy_flushes++;
        }
        if (!(window.get_head() >= target || stopping))
            member_waits++;
        // Poll now and then for a member whose thread pool has been stopped:
        // its flush requests would never run, and neither could this
        // member's pool be stopped while its thread waits here.
        while (!(window.get_head() >= target || stopping))
        {
            if (head_advanced.wait_for(lock, POOL_CHECK_INTERVAL) == std::cv_status::timeout
                && any_pool_stopped())
                return nullptr;
        }
    }
    // While the group stops, no new chunks: a member waiting above must not
    // wait for others that may never move again.
    if (stopping || chunk_id < window.get_head())
        return nullptr;
    window.extend_to(
        chunk_id, stream_id,
        [&](std::uint64_t id) { return allocate(std::int64_t(id), batch_stats).release(); },
        [&](chunk *c) { ready(std::unique_ptr<chunk>(c), batch_stats); },   // unreachable after the wait
        [](std::uint64_t) {});
    publish_window();
    return window.get(chunk_id);
}

void chunk_group::publish_window()
{
    health_head.store(window.get_head(), std::memory_order_relaxed);
    health_tail.store(window.get_tail(), std::memory_order_relaxed);
}

chunk_group::health chunk_group::get_health() const
{
    const std::uint64_t head = health_head.load(std::memory_order_relaxed);
    const std::uint64_t tail = health_tail.load(std::memory_order_relaxed);
    const bool live = head != chunk_window::END;
    return {live ? head : 0, live && tail > head ? std::size_t(tail - head) : 0,
            lossy_flushes.load(std::memory_order_relaxed), member_waits.load(std::memory_order_relaxed)};
}

bool chunk_group::any_pool_stopped() const
{
    for (const auto &m : members)
        if (m->flush_worker.is_stopped())
            return true;
    return false;
}

void chunk_group::member_head_moved(std::size_t index, std::uint64_t head, std::uint64_t *batch_stats)
{
    std::unique_lock<std::mutex> lock(mutex);
    const std::uint64_t old = member_heads[index];
    member_heads[index] = head;
    if (old != window.get_head())
        return;   // another member is further behind: the group head stays
    const std::uint64_t low = *std::min_element(member_heads.begin(), member_heads.end());
    bool advanced = false;
    window.flush_until(
        low,
        [&](chunk *c) { ready(std::unique_ptr<chunk>(c), batch_stats); },
        [&](std::uint64_t) { advanced = true; });
    publish_window();
    lock.unlock();   // waiters woken with the mutex held would only block on it
    if (advanced)
        head_advanced.notify_all();
}

void chunk_group::stop()
{
    {
        std::lock_guard<std::mutex> lock(mutex);
        stopping = true;
    }
    head_advanced.notify_all();
    // No lock held from here: stopping a member reports to the group.
    if (config.get_eviction_mode() == eviction_mode::LOSSLESS)
    {
        // A member waiting for a lagging one must not wait for ever: make
        // every member let go of its chunks.  (LOSSY members already were.)
        for (auto &m : members)
            m->request_flush_until(chunk_window::END);
    }
    for (auto &m : members)
        m->chunk_stream::stop();
    for (auto &m : members)
        m->drain_requests();
}

} // namespace spead2::chunk
