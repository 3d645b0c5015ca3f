// A bounded multi-producer / multi-consumer FIFO with stop semantics and
// pollable file descriptors (for asyncio).
//
// data_fd() is readable while the ring holds an item or is stopped;
// space_fd() is readable while there is free space or the ring is stopped.
// Both are eventfds kept in step with the fill level under the ring's mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>

namespace spead2
{

/// Thrown by a ringbuffer operation that can never succeed (stopped).
class ringbuffer_stopped : public std::runtime_error
{
public:
    ringbuffer_stopped() : std::runtime_error("ringbuffer has been stopped") {}
};
class ringbuffer_empty : public std::runtime_error
{
public:
    ringbuffer_empty() : std::runtime_error("ringbuffer is empty") {}
};
class ringbuffer_full : public std::runtime_error
{
public:
    ringbuffer_full() : std::runtime_error("ringbuffer is full") {}
};

/// Tell the CPU this thread is spinning (pause on x86).
inline void cpu_relax()
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

/// A flag that can be polled: an eventfd, readable while the flag is set.
/// The eventfd is made the first time someone asks for it, so owners whose
/// flag nobody polls (a synchronous consumer) make no system call when it
/// changes: that was an eventfd write and read per chunk on the stream's
/// worker.  Both members are called with the owner's mutex held.
class level_fd
{
    int fd = -1;
    bool set = false;
public:
    level_fd() = default;
    ~level_fd();
    level_fd(const level_fd &) = delete;
    level_fd &operator=(const level_fd &) = delete;
    /// The eventfd, made readable if @a readable_now when it is first made.
    int get(bool readable_now);
    void update(bool readable);
};

template<typename T>
class ringbuffer
{
    mutable std::mutex mutex;
    std::condition_variable data_cond, space_cond;
    std::deque<T> items;
    std::size_t capacity_;
    // For pop_for's spin: read without the mutex, written with it held.
    std::atomic<bool> ready_hint{false};   ///< items held, or stopped
    std::chrono::nanoseconds spin{0};
    bool stopped = false;
    int producers = 0;
    // Health counters (guarded by mutex)
    std::size_t high_water = 0;            ///< most items ever held at once
    std::uint64_t blocked_pushes = 0;      ///< blocking push() calls that found the ring full
    std::uint64_t blocked_pops = 0;        ///< blocking pop() calls that found the ring empty
    mutable level_fd data_flag, space_flag;

    bool has_data() const { return stopped || !items.empty(); }
    bool has_space() const { return stopped || items.size() < capacity_; }
    void update_flags()
    {
        ready_hint.store(has_data(), std::memory_order_relaxed);
        data_flag.update(has_data());
        space_flag.update(has_space());
    }

    // Both release the lock before notifying: a thread woken while the lock
    // is still held would only block on it again (measured: the Python
    // consumer slept twice per chunk instead of once).  Callers hold the ring
    // through a shared_ptr, so it outlives the notify.
    T take(std::unique_lock<std::mutex> &lock)
    {
        T item = std::move(items.front());
        items.pop_front();
        update_flags();
        lock.unlock();
        space_cond.notify_one();
        return item;
    }

    void give(std::unique_lock<std::mutex> &lock, T &&item)
    {
        items.push_back(std::move(item));
        if (items.size() > high_water)
            high_water = items.size();
        update_flags();
        lock.unlock();
        data_cond.notify_one();
    }

    void poll_until_ready() const
    {
        const auto until = std::chrono::steady_clock::now() + spin;
        do
        {
            for (int i = 0; i < 32 && !ready_hint.load(std::memory_order_relaxed); i++)
                cpu_relax();
        } while (!ready_hint.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until);
    }

public:
    explicit ringbuffer(std::size_t capacity) : capacity_(capacity)
    {
        if (capacity == 0)
            throw std::invalid_argument("ringbuffer capacity must be positive");
        update_flags();
    }

    std::size_t capacity() const { return capacity_; }
    std::size_t size() const { std::lock_guard<std::mutex> lock(mutex); return items.size(); }
    int data_fd() const { std::lock_guard<std::mutex> lock(mutex); return data_flag.get(has_data()); }
    int space_fd() const { std::lock_guard<std::mutex> lock(mutex); return space_flag.get(has_space()); }
    bool is_stopped() const { std::lock_guard<std::mutex> lock(mutex); return stopped; }

    /// How long pop_for polls an empty ring before it sleeps (set before
    /// the ring is shared between threads).  While the consumer polls, a
    /// producer that pushes finds no sleeper to wake: it saves the wake-up
    /// (a futex system call and an inter-processor interrupt; 14 us on the
    /// 2-core VM of doc/benchmarking.rst) at the cost of the consumer's CPU.
    void set_spin(std::chrono::nanoseconds value) { spin = value; }
    std::chrono::nanoseconds get_spin() const { return spin; }

    /// Pop, waiting at most @a timeout (after polling for up to the spin time,
    /// which may exceed @a timeout).  Returns nullopt on timeout.
    /// Throws ringbuffer_stopped if stopped and drained.
    template<typename Rep, typename Period>
    std::optional<T> pop_for(std::chrono::duration<Rep, Period> timeout)
    {
        if (spin.count() > 0 && !ready_hint.load(std::memory_order_relaxed))
            poll_until_ready();
        std::unique_lock<std::mutex> lock(mutex);
        if (!data_cond.wait_for(lock, timeout, [&] { return stopped || !items.empty(); }))
            return std::nullopt;
        if (items.empty())
            throw ringbuffer_stopped();
        return take(lock);
    }

    T pop()
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (items.empty() && !stopped)
            blocked_pops++;
        data_cond.wait(lock, [&] { return stopped || !items.empty(); });
        if (items.empty())
            throw ringbuffer_stopped();
        return take(lock);
    }

    T try_pop()
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (items.empty())
        {
            if (stopped)
                throw ringbuffer_stopped();
            throw ringbuffer_empty();
        }
        return take(lock);
    }

    /// Push, waiting at most @a timeout.  On timeout returns false and leaves
    /// @a item untouched.  Throws ringbuffer_stopped (item untouched) if stopped.
    template<typename Rep, typename Period>
    bool push_for(T &item, std::chrono::duration<Rep, Period> timeout)
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (!space_cond.wait_for(lock, timeout, [&] { return stopped || items.size() < capacity_; }))
            return false;
        if (stopped)
            throw ringbuffer_stopped();
        give(lock, std::move(item));
        return true;
    }

    /// Blocking push.  Throws ringbuffer_stopped (item untouched) if stopped.
    void push(T &item)
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (items.size() >= capacity_ && !stopped)
            blocked_pushes++;
        space_cond.wait(lock, [&] { return stopped || items.size() < capacity_; });
        if (stopped)
            throw ringbuffer_stopped();
        give(lock, std::move(item));
    }

    /// Non-blocking push; throws ringbuffer_full or ringbuffer_stopped (item untouched).
    void try_push(T &item)
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (stopped)
            throw ringbuffer_stopped();
        if (items.size() >= capacity_)
            throw ringbuffer_full();
        give(lock, std::move(item));
    }

    /// Health: the most items held at once, and how often a blocking push()
    /// (a stream's worker delivering a chunk) found the ring full, or a
    /// blocking pop() (a worker waiting for a free chunk) found it empty.
    /// The Python-facing get/put (pop_for/push_for) are not counted.
    struct health
    {
        std::size_t high_water;
        std::uint64_t blocked_pushes;
        std::uint64_t blocked_pops;
    };
    health get_health() const
    {
        std::lock_guard<std::mutex> lock(mutex);
        return {high_water, blocked_pushes, blocked_pops};
    }
    void reset_high_water()
    {
        std::lock_guard<std::mutex> lock(mutex);
        high_water = items.size();
    }

    /// Stop the ring: pushes fail from now on, pops drain what is left.
    /// Returns true (every call, as the reference does).
    bool stop()
    {
        std::lock_guard<std::mutex> lock(mutex);
        stopped = true;
        update_flags();
        data_cond.notify_all();
        space_cond.notify_all();
        return true;
    }

    void add_producer()
    {
        std::lock_guard<std::mutex> lock(mutex);
        producers++;
    }

    /// Returns true if this removed the last producer (and so stopped the ring).
    bool remove_producer()
    {
        std::unique_lock<std::mutex> lock(mutex);
        if (producers > 0)
            producers--;
        if (producers == 0)
        {
            lock.unlock();
            stop();
            return true;
        }
        return false;
    }

    /// Remove everything (used when tearing down, with the owner's locks held).
    std::deque<T> drain()
    {
        std::lock_guard<std::mutex> lock(mutex);
        std::deque<T> out;
        out.swap(items);
        update_flags();
        space_cond.notify_all();
        return out;
    }
};

} // namespace spead2
