#include "common/thread_pool.h"
#include "common/logging.h"

#include <cerrno>
#include <cstring>
#include <future>
#include <stdexcept>
#include <system_error>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace spead2
{

namespace
{
constexpr int MAX_EVENTS = 64;
}

worker::worker()
{
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0)
        throw std::system_error(errno, std::generic_category(), "epoll_create1");
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0)
    {
        int err = errno;
        close(epoll_fd);
        throw std::system_error(err, std::generic_category(), "eventfd");
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_fd;
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev);
}

worker::~worker()
{
    close(wake_fd);
    close(epoll_fd);
}

void worker::wake()
{
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t r = write(wake_fd, &one, sizeof(one));
}

void worker::post(std::function<void()> task)
{
    bool need_wake;
    {
        std::lock_guard<std::mutex> lock(mutex);
        // A task posted by the worker itself (a reader queueing its next
        // batch) needs no wake-up: the worker looks at its queue before it
        // waits.  That saves two system calls per batch of a pcap replay.
        need_wake = tasks.empty() && !on_this_thread();
        tasks.push_back(std::move(task));
    }
    if (need_wake)
        wake();
}

void worker::add_fd(int fd, std::function<void()> on_readable)
{
    handlers[fd] = std::make_shared<std::function<void()>>(std::move(on_readable));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
    {
        int err = errno;
        handlers.erase(fd);
        throw std::system_error(err, std::generic_category(), "epoll_ctl(ADD)");
    }
}

void worker::remove_fd(int fd)
{
    if (handlers.erase(fd))
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
}

void worker::run_sync(const std::function<void()> &task)
{
    if (on_this_thread() || stopping.load())
    {
        task();
        return;
    }
    // The promise belongs to the task: if the pool is stopped and the task is
    // dropped unrun, the future reports a broken promise instead of hanging.
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    post([done, &task] {
        try
        {
            task();
            done->set_value();
        }
        catch (...)
        {
            done->set_exception(std::current_exception());
        }
    });
    try
    {
        fut.get();
    }
    catch (std::future_error &)
    {
        // Dropped by a pool stop: nothing ran, nothing to wait for.
    }
}

void worker::run(int cpu)
{
    // thread_id was set before the pool's constructor returned.
    pthread_setname_np(pthread_self(), "spead2-worker");  // visible in top/perf
    if (cpu >= 0)
        thread_pool::set_affinity(cpu);
    epoll_event events[MAX_EVENTS];
    while (!stopping.load())
    {
        bool have_tasks;
        {
            std::lock_guard<std::mutex> lock(mutex);
            have_tasks = !tasks.empty();
        }
        // With tasks queued and no reader fds to service, there is nothing
        // to poll for (the wake-up counter is drained on a later round).
        int n = have_tasks && handlers.empty() ? 0 : epoll_wait(epoll_fd, events, MAX_EVENTS, have_tasks ? 0 : -1);
        if (n < 0 && errno != EINTR)
        {
            log_error("epoll_wait failed: %s", std::strerror(errno));
            break;
        }
        for (int i = 0; i < n && !stopping.load(); i++)
        {
            int fd = events[i].data.fd;
            if (fd == wake_fd)
            {
                std::uint64_t value;
                [[maybe_unused]] ssize_t r = read(wake_fd, &value, sizeof(value));
                continue;
            }
            auto it = handlers.find(fd);
            if (it == handlers.end())
                continue;   // removed by an earlier handler in this round
            auto handler = it->second;  // keep alive even if it removes itself
            try
            {
                (*handler)();
            }
            catch (std::exception &e)
            {
                log_error("reader callback failed: %s", e.what());
            }
        }
        // Run the tasks queued so far (not ones they post), so fds stay serviced.
        std::deque<std::function<void()>> batch;
        {
            std::lock_guard<std::mutex> lock(mutex);
            batch.swap(tasks);
        }
        for (auto &task : batch)
        {
            if (stopping.load())
                break;
            try
            {
                task();
            }
            catch (std::exception &e)
            {
                log_error("worker task failed: %s", e.what());
            }
        }
    }
}

thread_pool::thread_pool(int threads, const std::vector<int> &affinity)
{
    if (threads < 1)
        throw std::invalid_argument("at least one thread is required");
    for (int i = 0; i < threads; i++)
        workers.push_back(std::make_unique<worker>());
    for (int i = 0; i < threads; i++)
    {
        int cpu = affinity.empty() ? -1 : affinity[i % affinity.size()];
        worker *w = workers[i].get();
        std::promise<void> started;
        auto fut = started.get_future();
        w->thread = std::thread([w, cpu, &started] {
            w->thread_id = std::this_thread::get_id();
            started.set_value();
            w->run(cpu);
        });
        fut.get();  // thread_id is known before anyone posts
    }
}

thread_pool::~thread_pool()
{
    stop();
}

worker &thread_pool::pick_worker()
{
    return *workers[next.fetch_add(1) % workers.size()];
}

void thread_pool::stop()
{
    std::lock_guard<std::mutex> lock(stop_mutex);
    if (stopped)
        return;
    stopped = true;
    for (auto &w : workers)
    {
        w->stopping.store(true);
        w->wake();
    }
    for (auto &w : workers)
    {
        if (w->thread.joinable())
        {
            if (w->thread.get_id() == std::this_thread::get_id())
                w->thread.detach();
            else
                w->thread.join();
        }
        std::deque<std::function<void()>> dropped;
        {
            std::lock_guard<std::mutex> task_lock(w->mutex);
            dropped.swap(w->tasks);
        }
        // destroyed here, outside the lock: breaks the promises of run_sync callers
    }
}

void thread_pool::set_affinity(int core)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (core < 0 || core >= CPU_SETSIZE)
    {
        log_warning("Failed to bind to CPU core %d: invalid core number", core);
        return;
    }
    CPU_SET(core, &set);
    int status = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (status != 0)
        log_warning("Failed to bind to CPU core %d: %s", core, std::strerror(status));
}

} // namespace spead2
