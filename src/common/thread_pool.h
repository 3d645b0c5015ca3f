// Thread pool: N worker threads, each running its own epoll reactor.
//
// A reader is bound to one worker.  It either registers a file descriptor
// (called back on that worker whenever the fd is readable; level-triggered)
// or posts itself as a task repeatedly (busy readers such as file replay), so
// every reader yields between batches and stop requests are honoured.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>
#include <deque>

namespace spead2
{

class worker
{
    friend class thread_pool;
    int epoll_fd = -1;
    int wake_fd = -1;
    std::mutex mutex;
    std::deque<std::function<void()>> tasks;
    std::unordered_map<int, std::shared_ptr<std::function<void()>>> handlers;  // only touched on the worker
    std::atomic<bool> stopping{false};
    std::thread thread;
    std::thread::id thread_id;

    void run(int cpu);
    void wake();
public:
    worker();
    ~worker();
    worker(const worker &) = delete;
    worker &operator=(const worker &) = delete;

    /// Run @a task on this worker thread, after tasks already posted.
    void post(std::function<void()> task);
    /// Register @a fd; @a on_readable runs on this worker while it is readable.
    /// Must be called on this worker (post it otherwise).
    void add_fd(int fd, std::function<void()> on_readable);
    /// Unregister @a fd.  Must be called on this worker.
    void remove_fd(int fd);
    /// Run @a task on this worker and wait for it (runs inline when already on it).
    void run_sync(const std::function<void()> &task);
    bool on_this_thread() const { return std::this_thread::get_id() == thread_id; }
    bool is_stopped() const { return stopping.load(); }
};

class thread_pool
{
    std::vector<std::unique_ptr<worker>> workers;
    std::atomic<unsigned> next{0};
    std::mutex stop_mutex;
    bool stopped = false;
public:
    /// @a affinity: CPU cores, reused cyclically; empty for no pinning.
    explicit thread_pool(int threads = 1, const std::vector<int> &affinity = {});
    ~thread_pool();
    /// Choose the worker for a new reader (round robin).
    worker &pick_worker();
    std::size_t size() const { return workers.size(); }
    /// Stop all workers and join them (idempotent).  Tasks not yet run are dropped.
    void stop();
    /// Pin the calling thread to @a core (warns on failure).
    static void set_affinity(int core);
};

} // namespace spead2
