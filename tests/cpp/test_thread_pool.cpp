// Unit tests of the worker loop (common/thread_pool): tasks a worker posts
// to itself (a pcap reader queueing its next batch) wake nobody and skip the
// epoll call when no fd is registered, yet registered fds are still serviced
// between two such tasks, and posts from other threads are never lost.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <thread>

#include <sys/eventfd.h>
#include <unistd.h>

#include "common/thread_pool.h"

#include "check.h"

using namespace spead2;

namespace
{

// Hang bound only: every wait below ends as soon as the work is done.
constexpr auto HANG = std::chrono::seconds(20);

/// A task that posts itself again until it has run @a total times, calling
/// @a each(step) every time; @a done is set after the last step.
struct chain
{
    worker &w;
    int total;
    std::function<void(int)> each;
    std::promise<void> done;
    int step = 0;

    void run()
    {
        each(step);
        if (++step == total)
            done.set_value();
        else
            w.post([this] { run(); });
    }
};

void test_fd_serviced_between_self_posts()
{
    thread_pool pool(1);
    worker &w = pool.pick_worker();
    const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(fd >= 0);
    std::atomic<int> seen_at{-1};
    chain c{w, 2000, nullptr, {}};
    c.each = [&](int step) {
        if (step == 10)
        {
            std::uint64_t one = 1;
            CHECK(write(fd, &one, sizeof(one)) == sizeof(one));
        }
    };
    auto done = c.done.get_future();
    w.post([&] {
        w.add_fd(fd, [&] {
            std::uint64_t v;
            [[maybe_unused]] ssize_t r = read(fd, &v, sizeof(v));
            if (seen_at.load() < 0)
                seen_at.store(c.step);
        });
        c.run();
    });
    CHECK(done.wait_for(HANG) == std::future_status::ready);
    // The fd became readable after step 10 and is polled before the next task.
    CHECK(seen_at.load() == 11);
    w.run_sync([&] { w.remove_fd(fd); });
    close(fd);
}

void test_external_posts_not_lost()
{
    thread_pool pool(1);
    worker &w = pool.pick_worker();
    // A long self-posting chain with no fd registered (no epoll calls), and
    // another thread posting meanwhile.
    chain c{w, 200000, [](int) {}, {}};
    auto done = c.done.get_future();
    w.post([&] { c.run(); });
    std::atomic<int> external{0};
    for (int i = 0; i < 100; i++)
        w.post([&] { external++; });
    CHECK(done.wait_for(HANG) == std::future_status::ready);
    // The worker now waits; a post from outside must still wake it.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::promise<void> later;
    auto later_done = later.get_future();
    w.post([&] { later.set_value(); });
    CHECK(later_done.wait_for(HANG) == std::future_status::ready);
    CHECK(external.load() == 100);
    // run_sync from inside a task runs inline (the worker is this thread).
    bool inline_ran = false;
    w.run_sync([&] { w.run_sync([&] { inline_ran = true; }); });
    CHECK(inline_ran);
}

void test_stop_during_chain()
{
    // Stopping the pool while a chain keeps posting itself ends the worker.
    auto pool = std::make_unique<thread_pool>(1);
    worker &w = pool->pick_worker();
    auto c = std::make_shared<chain>(chain{w, 1 << 30, [](int) {}, {}});
    w.post([c] { c->run(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto stopped = std::async(std::launch::async, [&] { pool->stop(); });
    CHECK(stopped.wait_for(HANG) == std::future_status::ready);
    CHECK(c->step < (1 << 30));
}

} // anonymous namespace

int main()
{
    test_fd_serviced_between_self_posts();
    test_external_posts_not_lost();
    test_stop_during_chain();
    return check_result("test_thread_pool");
}
