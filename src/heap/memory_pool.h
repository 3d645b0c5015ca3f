// A pool of equally sized payload buffers (the reference's MemoryPool).
//
// Requests of lower..upper bytes (inclusive) are served with a buffer of
// exactly @c upper bytes taken from the pool's free list; other sizes go
// straight to the underlying allocator.  A pool buffer that is released goes
// back on the free list unless @c max_free buffers are already there (then it
// is freed).  @c initial buffers are made up front.  When the free list is
// empty a new buffer is allocated on the spot, with a warning unless
// warn_on_empty is off.
//
// With a thread pool, the pool also keeps itself topped up: whenever fewer
// than @c low_water buffers are free, a task on the thread pool allocates
// buffers until @c low_water are free again (never beyond max_free), so the
// receive path rarely has to allocate.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/thread_pool.h"
#include "heap/memory.h"

namespace spead2::heap
{

class memory_pool : public memory_allocator
{
public:
    memory_pool(std::size_t lower, std::size_t upper, std::size_t max_free, std::size_t initial,
                std::shared_ptr<memory_allocator> base = nullptr);
    /// With a refill task on @a refill_pool (see above).
    memory_pool(std::shared_ptr<thread_pool> refill_pool,
                std::size_t lower, std::size_t upper, std::size_t max_free, std::size_t initial,
                std::size_t low_water, std::shared_ptr<memory_allocator> base = nullptr);
    ~memory_pool() override;

    std::uint8_t *allocate(std::size_t size) override;
    void deallocate(std::uint8_t *ptr, std::size_t size) noexcept override;

    void set_warn_on_empty(bool warn) { warn_on_empty.store(warn, std::memory_order_relaxed); }
    bool get_warn_on_empty() const { return warn_on_empty.load(std::memory_order_relaxed); }

    /// Start the refill task if fewer than low_water buffers are free.  The
    /// pool must be owned by a std::shared_ptr (the task holds a weak_ptr);
    /// allocations call this too, so it is needed only right after
    /// construction.
    void top_up();

    /// Buffers on the free list now (for tests and diagnostics).
    std::size_t free_buffers() const;
    /// Requests served from the free list / that found it empty (for tests and diagnostics).
    std::uint64_t reused() const { return reused_count.load(std::memory_order_relaxed); }
    std::uint64_t empty_hits() const { return empty_count.load(std::memory_order_relaxed); }

private:
    const std::size_t lower, upper, max_free, low_water;
    const std::shared_ptr<memory_allocator> base;
    const std::shared_ptr<thread_pool> refill_pool;   ///< null: no refill task

    mutable std::mutex mutex;
    std::vector<std::uint8_t *> free_list;   ///< guarded by mutex
    bool refilling = false;                  ///< a refill task is posted (guarded by mutex)
    std::atomic<bool> warn_on_empty{true};
    std::atomic<std::uint64_t> reused_count{0};
    std::atomic<std::uint64_t> empty_count{0};

    bool in_range(std::size_t size) const { return size >= lower && size <= upper; }
    /// Post a refill task if one is wanted and none is pending (mutex held).
    void maybe_refill_locked();
    static void refill(const std::weak_ptr<memory_pool> &weak);
};

} // namespace spead2::heap
