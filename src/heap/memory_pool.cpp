#include "heap/memory_pool.h"

#include <algorithm>

#include "common/logging.h"

namespace spead2::heap
{

memory_pool::memory_pool(std::size_t lower_, std::size_t upper_, std::size_t max_free_, std::size_t initial,
                         std::shared_ptr<memory_allocator> base_)
    : memory_pool(nullptr, lower_, upper_, max_free_, initial, 0, std::move(base_))
{
}

memory_pool::memory_pool(std::shared_ptr<thread_pool> refill_pool_,
                         std::size_t lower_, std::size_t upper_, std::size_t max_free_, std::size_t initial,
                         std::size_t low_water_, std::shared_ptr<memory_allocator> base_)
    : lower(lower_), upper(upper_), max_free(max_free_), low_water(low_water_),
      base(base_ ? std::move(base_) : get_default_allocator()),
      refill_pool(std::move(refill_pool_))
{
    // As the reference: no relation between the numbers is enforced.  The
    // initial buffers are all kept, even beyond max_free (the limit applies
    // to buffers coming back); a zero upper makes every size bypass the pool.
    free_list.reserve(std::max(initial, max_free));
    try
    {
        if (upper > 0)
            for (std::size_t i = 0; i < initial; i++)
                free_list.push_back(base->allocate(upper));
    }
    catch (...)
    {
        for (std::uint8_t *p : free_list)
            base->deallocate(p, upper);
        throw;
    }
    // The refill task needs a weak_ptr to this object, which does not exist
    // inside the constructor: the owner calls top_up() (the first allocation
    // would start it too).
}

void memory_pool::top_up()
{
    std::lock_guard<std::mutex> lock(mutex);
    maybe_refill_locked();
}

memory_pool::~memory_pool()
{
    for (std::uint8_t *p : free_list)
        base->deallocate(p, upper);
}

std::size_t memory_pool::free_buffers() const
{
    std::lock_guard<std::mutex> lock(mutex);
    return free_list.size();
}

void memory_pool::maybe_refill_locked()
{
    if (!refill_pool || refilling || free_list.size() >= low_water || free_list.size() >= max_free)
        return;
    std::weak_ptr<memory_pool> weak;
    try
    {
        weak = std::static_pointer_cast<memory_pool>(shared_from_this());
    }
    catch (std::bad_weak_ptr &)
    {
        return;   // not owned by a shared_ptr: no background refill
    }
    refilling = true;
    refill_pool->pick_worker().post([weak] { refill(weak); });
}

void memory_pool::refill(const std::weak_ptr<memory_pool> &weak)
{
    for (;;)
    {
        std::shared_ptr<memory_pool> self = weak.lock();
        if (!self)
            return;   // the pool is gone
        std::uint8_t *ptr = nullptr;
        try
        {
            ptr = self->base->allocate(self->upper);   // outside the lock
        }
        catch (std::bad_alloc &)
        {
            log_warning("memory pool refill: allocating %zu bytes failed", self->upper);
            std::lock_guard<std::mutex> lock(self->mutex);
            self->refilling = false;
            return;
        }
        std::lock_guard<std::mutex> lock(self->mutex);
        const std::size_t target = std::min(self->low_water, self->max_free);
        if (self->free_list.size() >= target)
        {
            self->refilling = false;
            self->base->deallocate(ptr, self->upper);
            return;
        }
        self->free_list.push_back(ptr);
        if (self->free_list.size() >= target)
        {
            self->refilling = false;
            return;
        }
    }
}

std::uint8_t *memory_pool::allocate(std::size_t size)
{
    if (!in_range(size))
        return base->allocate(size);
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (!free_list.empty())
        {
            std::uint8_t *ptr = free_list.back();
            free_list.pop_back();
            maybe_refill_locked();
            reused_count.fetch_add(1, std::memory_order_relaxed);
            return ptr;
        }
        maybe_refill_locked();
    }
    empty_count.fetch_add(1, std::memory_order_relaxed);
    if (get_warn_on_empty())
        log_warning("memory pool is empty when allocating %zu bytes", size);
    return base->allocate(upper);
}

void memory_pool::deallocate(std::uint8_t *ptr, std::size_t size) noexcept
{
    if (!in_range(size))
    {
        base->deallocate(ptr, size);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (free_list.size() < max_free)
        {
            free_list.push_back(ptr);   // reserved up to max_free: does not throw
            return;
        }
    }
    base->deallocate(ptr, upper);
}

} // namespace spead2::heap
