#include "common/logging.h"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

namespace spead2
{

namespace
{

// Bounded so that a flood of bad packets cannot exhaust memory.
constexpr std::size_t LOG_QUEUE_CAPACITY = 1024;

struct log_state
{
    std::mutex mutex;
    std::condition_variable cond;
    std::deque<std::pair<log_level, std::string>> queue;
    log_sink sink;
    std::thread thread;
    bool stopping = false;
    bool started = false;
    unsigned long dropped = 0;
    unsigned long dropped_reported = 0;
};

log_state &state()
{
    // Leaked on purpose: it must outlive every static destructor that might log.
    static log_state *s = new log_state;
    return *s;
}

std::atomic<int> threshold{int(log_level::info)};

void deliver(log_sink &sink, log_level level, const std::string &msg)
{
    if (sink)
        sink(level, msg);
    else
    {
        const char *name = level >= log_level::error ? "error"
                           : level >= log_level::warning ? "warning"
                           : level >= log_level::info ? "info" : "debug";
        std::fprintf(stderr, "spead2: %s: %s\n", name, msg.c_str());
    }
}

void run_delivery()
{
    log_state &s = state();
    std::unique_lock<std::mutex> lock(s.mutex);
    for (;;)
    {
        s.cond.wait(lock, [&] { return s.stopping || !s.queue.empty(); });
        if (s.queue.empty() && s.stopping)
            break;
        auto item = std::move(s.queue.front());
        s.queue.pop_front();
        unsigned long newly_dropped = s.dropped - s.dropped_reported;
        s.dropped_reported = s.dropped;
        log_sink sink = s.sink;
        lock.unlock();
        deliver(sink, item.first, item.second);
        if (newly_dropped)
            deliver(sink, log_level::warning,
                    "Log ringbuffer was full - " + std::to_string(newly_dropped) + " messages were dropped");
        lock.lock();
    }
}

} // anonymous namespace

void set_log_threshold(log_level level) { threshold.store(int(level), std::memory_order_relaxed); }

bool log_enabled(log_level level) { return int(level) >= threshold.load(std::memory_order_relaxed); }

void log_message(log_level level, const char *format, ...)
{
    char buffer[1024];
    va_list ap;
    va_start(ap, format);
    std::vsnprintf(buffer, sizeof(buffer), format, ap);
    va_end(ap);
    log_state &s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.stopping)
    {
        // After shutdown there is nobody to deliver to; write straight out.
        if (level >= log_level::warning)
            std::fprintf(stderr, "spead2: %s\n", buffer);
        return;
    }
    if (s.queue.size() >= LOG_QUEUE_CAPACITY)
    {
        s.dropped++;
        return;
    }
    s.queue.emplace_back(level, buffer);
    if (!s.started)
    {
        s.started = true;
        s.thread = std::thread(run_delivery);
    }
    s.cond.notify_one();
}

void set_log_sink(log_sink sink)
{
    log_state &s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.sink = std::move(sink);
}

void stop_log_delivery()
{
    log_state &s = state();
    std::thread t;
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        if (s.stopping)
            return;
        s.stopping = true;
        s.cond.notify_all();
        t = std::move(s.thread);
    }
    if (t.joinable())
        t.join();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.sink = nullptr;
}

unsigned long log_messages_dropped()
{
    log_state &s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.dropped;
}

} // namespace spead2
