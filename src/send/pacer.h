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
// is on the order of one burst at Gb/s rates) and the pacer wakes early by
// its running estimate of the remaining oversleep.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <ctime>

#include <sys/prctl.h>

namespace spead2::send
{

class clock_source
{
public:
    using clock = std::chrono::steady_clock;
    using time_point = clock::time_point;
    using duration = clock::duration;
    virtual ~clock_source() = default;
    virtual time_point now() = 0;
    virtual void sleep_until(time_point when) = 0;
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
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count();
        timespec ts;
        ts.tv_sec = time_t(ns / 1000000000);
        ts.tv_nsec = long(ns % 1000000000);
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
};

class pacer
{
public:
    using time_point = clock_source::time_point;
    using duration = clock_source::duration;

    /// A sender that falls this far behind its schedule has been idle (or
    /// starved): the schedule restarts from now instead of catching up.
    static constexpr std::chrono::milliseconds IDLE_RESET{100};
    /// Upper bound on how early the pacer wakes to compensate for oversleeping.
    static constexpr std::chrono::microseconds MAX_COMPENSATION{200};

private:
    clock_source &clock;
    std::size_t burst_size;
    double burst_rate_ratio;

    bool started = false;
    time_point due{};              ///< when everything accounted so far is due at its rate
    time_point burst_anchor{};     ///< when the current burst was allowed to start
    double burst_seconds = 0.0;    ///< length of the current burst at the burst rate
    std::size_t burst_bytes = 0;   ///< paced bytes in the current burst
    duration compensation{0};      ///< running estimate of the oversleep

    static duration seconds(double s)
    {
        return std::chrono::duration_cast<duration>(std::chrono::duration<double>(s));
    }

public:
    pacer(clock_source &clock, std::size_t burst_size, double burst_rate_ratio)
        : clock(clock), burst_size(burst_size), burst_rate_ratio(burst_rate_ratio)
    {
    }

    /// Call before a group of packets: restarts the schedule after idleness.
    void begin()
    {
        const time_point now = clock.now();
        if (!started || now - due > IDLE_RESET)
        {
            due = burst_anchor = now;
            burst_seconds = 0.0;
            burst_bytes = 0;
            started = true;
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
        const time_point now = clock.now();
        if (target > now)
        {
            clock.sleep_until(target - compensation);
            const duration late = clock.now() - target;
            // Move the estimate an eighth of the way towards this wake-up's error.
            compensation += late / 8;
            compensation = std::clamp(compensation, duration(0), duration(MAX_COMPENSATION));
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
