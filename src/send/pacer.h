// Rate pacing for send streams.
//
// The pacer keeps an absolute schedule: every packet handed to it moves the
// time at which the bytes sent so far are due (at the packet's own rate), so
// a late wake-up never shifts the rest of the schedule; the lag is made up by
// the next bursts.  How quickly it is made up is bounded by the burst rate
// (rate × burst_rate_ratio): each burst of at least burst_size bytes may not
// start before the previous one, timed at the burst rate from when *it* was
// due, is over.
//
// Sleeping is delegated to a clock_source so that the arithmetic can be
// tested with a fake clock (tests/cpp/test_send_pacer.cpp).  The real clock
// lowers the thread's timer slack while it sleeps (the default slack, 50 µs,
// is on the order of one burst at Gb/s rates); the pacer wakes early by its
// running estimate of the mean oversleep, and busy-waits instead a wait
// shorter than that estimate.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>

#include <sys/prctl.h>

namespace spead2::send
{

class clock_source
{
public:
    using clock = std::chrono::steady_clock;
    /// Nanoseconds since the clock's epoch as a timespec.
    static timespec to_timespec(std::int64_t ns)
    {
        timespec ts;
        ts.tv_sec = time_t(ns / 1000000000);
        ts.tv_nsec = long(ns % 1000000000);
        return ts;
    }
    static std::int64_t to_ns(std::chrono::steady_clock::time_point t)
    {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    }
    using time_point = clock::time_point;
    using duration = clock::duration;
    virtual ~clock_source() = default;
    virtual time_point now() = 0;
    virtual void sleep_until(time_point when) = 0;
    /// Busy-wait until @a when (for waits shorter than the usual oversleep).
    virtual void spin_until(time_point when) = 0;
    /// Wall-clock time to stamp on packets written now (pcap records).
    virtual timespec wall_time()
    {
        timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return ts;
    }
};

/// steady_clock, sleeping with clock_nanosleep(TIMER_ABSTIME) and a small timer slack.
class steady_clock_source final : public clock_source
{
public:
    /// Timer slack (ns) requested for the duration of a pacing sleep.
    static constexpr unsigned long PACING_TIMER_SLACK_NS = 1000;

    time_point now() override { return clock::now(); }

    void sleep_until(time_point when) override
    {
        const timespec ts = to_timespec(to_ns(when));
        const int old_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        if (old_slack > 0)
            prctl(PR_SET_TIMERSLACK, PACING_TIMER_SLACK_NS, 0, 0, 0);
        // steady_clock is CLOCK_MONOTONIC on Linux; EINTR just means try again.
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0)
        {
        }
        if (old_slack > 0)
            prctl(PR_SET_TIMERSLACK, (unsigned long) old_slack, 0, 0, 0);
    }

    void spin_until(time_point when) override
    {
        while (clock::now() < when)
        {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
};

/// A clock that moves only when told to or when slept on (sleep_until jumps
/// straight to the deadline), so that the schedule of a paced stream can be
/// checked exactly, with no real time passing (Stream._set_clock in Python).
/// Its wall time is its own time since its epoch (pcap timestamps follow it).
class manual_clock_source final : public clock_source
{
    std::atomic<std::int64_t> ns;
    std::atomic<std::uint64_t> n_sleeps{0};
public:
    explicit manual_clock_source(std::int64_t start_ns = 0) : ns(start_ns) {}
    time_point now() override { return time_point(std::chrono::nanoseconds(ns.load())); }
    void sleep_until(time_point when) override
    {
        spin_until(when);
        n_sleeps++;
    }
    /// Jump to @a when (never backwards).
    void spin_until(time_point when) override
    {
        const std::int64_t w = to_ns(when);
        std::int64_t cur = ns.load();
        while (w > cur && !ns.compare_exchange_weak(cur, w))
        {
        }
    }
    timespec wall_time() override { return to_timespec(ns.load()); }
    /// Move time forward by @a d nanoseconds (d >= 0).
    void advance(std::int64_t d) { ns += d; }
    std::int64_t get_ns() const { return ns.load(); }
    /// How many times a pacer slept on this clock.
    std::uint64_t get_sleeps() const { return n_sleeps.load(); }
};

class pacer
{
public:
    using time_point = clock_source::time_point;
    using duration = clock_source::duration;

    /// A sender that falls this far behind its schedule has been idle (or
    /// starved): the schedule restarts from now instead of catching up.
    static constexpr std::chrono::milliseconds IDLE_RESET{100};
    /// Upper bound on the oversleep estimate (the pacer wakes that early and spins).
    static constexpr std::chrono::microseconds MAX_COMPENSATION{200};

private:
    clock_source *clock;
    std::size_t burst_size;
    double burst_rate_ratio;

    bool started = false;
    time_point due{};              ///< when everything accounted so far is due at its rate
    time_point burst_anchor{};     ///< when the current burst was allowed to start
    double burst_seconds = 0.0;    ///< length of the current burst at the burst rate
    std::size_t burst_bytes = 0;   ///< paced bytes in the current burst
    duration oversleep{0};         ///< running estimate of how late a sleep wakes

    static duration seconds(double s)
    {
        return std::chrono::duration_cast<duration>(std::chrono::duration<double>(s));
    }

public:
    pacer(clock_source &clock, std::size_t burst_size, double burst_rate_ratio)
        : clock(&clock), burst_size(burst_size), burst_rate_ratio(burst_rate_ratio)
    {
    }

    /// Use @a c from now on; the schedule restarts at the next begin().
    void set_clock(clock_source &c)
    {
        clock = &c;
        started = false;
        oversleep = duration(0);
    }

    /// Call before a group of packets: restarts the schedule after idleness.
    void begin()
    {
        const time_point now = clock->now();
        if (!started || now - due > IDLE_RESET)
        {
            due = burst_anchor = now;
            burst_seconds = 0.0;
            burst_bytes = 0;
            started = true;
        }
        else if (now > burst_anchor + seconds(burst_seconds))
        {
            // The caller paused in the middle of a burst (between two
            // groups): the part already sent counts as sent at the burst
            // rate up to now, and the rest of the burst follows from here.
            // Without this, a sender that fell behind while idle sent the
            // rest of that burst and the whole next one back to back.
            burst_anchor = now - seconds(burst_seconds);
        }
    }

    /// Account for a packet of @a bytes to be sent at @a rate bytes per
    /// second (rate <= 0: not paced).
    void add(std::size_t bytes, double rate)
    {
        if (rate <= 0.0)
            return;
        due += seconds(bytes / rate);
        burst_seconds += bytes / (rate * burst_rate_ratio);
        burst_bytes += bytes;
    }

    /// Whether the packets accounted so far make a complete burst.
    bool burst_full() const { return burst_bytes >= burst_size; }

    /// Call after the packets accounted so far were transmitted: when they
    /// complete a burst, waits until the next burst may start.
    void end_batch()
    {
        if (!burst_full())
            return;
        const time_point target = std::max(due, burst_anchor + seconds(burst_seconds));
        const time_point now = clock->now();
        if (target > now)
        {
            // A wait longer than the usual oversleep is slept, waking early by
            // that much (a wake-up a little early or late is evened out by
            // the absolute schedule).  A shorter one is busy-waited: at high
            // rates a burst lasts tens of microseconds, about the oversleep
            // of a VM's timer, and sleeping would lose the rate for good.
            if (target - now > oversleep)
            {
                const time_point wake_at = target - oversleep;
                clock->sleep_until(wake_at);
                const duration err = std::max(clock->now() - wake_at, duration(0));
                // Move the estimate an eighth of the way towards this wake-up's oversleep.
                oversleep += (err - oversleep) / 8;
                oversleep = std::clamp(oversleep, duration(0), duration(MAX_COMPENSATION));
            }
            else
            {
                clock->spin_until(target);
                // Let the estimate decay while only spinning, so that one
                // long oversleep does not keep the pacer spinning for good.
                oversleep -= oversleep / 256;
            }
            burst_anchor = target;
        }
        else
            burst_anchor = now;   // behind: catch up, at no more than the burst rate
        burst_seconds = 0.0;
        burst_bytes = 0;
    }

    /// When the bytes accounted so far are due (for tests and diagnostics).
    time_point get_due() const { return due; }
};

} // namespace spead2::send
