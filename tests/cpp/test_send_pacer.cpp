// Pacing arithmetic of spead2::send::pacer, with a fake clock: no real time
// passes, so the checks are exact.  Built and run by tests/test_send_pacer.py
// (and by ctest with -DSPEAD2_CPP_TESTS=ON).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "send/pacer.h"

#include "check.h"

using namespace spead2::send;
using namespace std::chrono;



namespace
{

/// Time moves only when the pacer sleeps (plus @a oversleep per sleep) or the test says so.
class fake_clock : public clock_source
{
public:
    time_point t{seconds(1000)};
    duration oversleep{0};
    std::vector<time_point> wakes;   ///< when each sleep ended
    time_point now() override { return t; }
    void sleep_until(time_point when) override
    {
        if (when > t)
            t = when;
        t += oversleep;
        wakes.push_back(t);
    }
    void spin_until(time_point when) override
    {
        if (when > t)
            t = when;
    }
};

double secs(clock_source::duration d) { return duration_cast<duration<double>>(d).count(); }

/// Send @a total bytes in packets of @a packet bytes, one batch per packet,
/// taking @a tx of clock time per batch; returns elapsed seconds.
double run(fake_clock &clock, pacer &p, std::size_t total, std::size_t packet, double rate,
           clock_source::duration tx = clock_source::duration(0))
{
    const auto start = clock.t;
    p.begin();
    for (std::size_t sent = 0; sent < total; sent += packet)
    {
        p.add(packet, rate);
        clock.t += tx;
        p.end_batch();
    }
    return secs(clock.t - start);
}

void test_exact_rate()
{
    // 1 GB/s, 64 KiB bursts, 8 KiB packets: 1 GB takes 1 s (to the last burst).
    fake_clock clock;
    pacer p(clock, 65536, 1.05);
    const double elapsed = run(clock, p, 1 << 30, 8192, 1e9);
    CHECK(std::abs(elapsed - (1 << 30) / 1e9) < 1e-6);
}

void test_oversleep_does_not_drift()
{
    // Every sleep ends 50 µs late (Linux's default timer slack), bursts are
    // 65 µs long at 1 GB/s, sending takes 10 µs per 8 KiB: the long-run rate
    // must still be the requested one (within 0.1 %), as the schedule is
    // absolute and the pacer learns to wake early.
    fake_clock clock;
    clock.oversleep = microseconds(50);
    pacer p(clock, 65536, 1.05);
    const std::size_t total = std::size_t(1) << 30;
    const double elapsed = run(clock, p, total, 8192, 1e9, microseconds(1));
    const double achieved = total / elapsed;
    std::printf("oversleep 50 us: achieved %.4f of the rate\n", achieved / 1e9);
    CHECK(std::abs(achieved / 1e9 - 1.0) < 1e-3);
}

void test_slow_transport_catches_up_at_burst_rate()
{
    // A 5 ms stall (shorter than IDLE_RESET) puts the sender behind; it
    // catches up with bursts no faster than rate × burst_rate_ratio.
    fake_clock clock;
    pacer p(clock, 65536, 1.05);
    const double rate = 1e8;
    run(clock, p, 1 << 20, 8192, rate);
    clock.t += milliseconds(5);
    clock.wakes.clear();
    const auto start = clock.t;
    run(clock, p, 1 << 20, 8192, rate);
    // 1 MiB at the burst rate: 16 bursts.
    for (std::size_t i = 1; i < clock.wakes.size(); i++)
    {
        const double gap = secs(clock.wakes[i] - clock.wakes[i - 1]);
        CHECK(gap >= 65536 / (rate * 1.05) - 1e-9);
    }
    // Caught up: the whole thing ends when the schedule says, not 5 ms later.
    (void) start;
    CHECK(secs(clock.t - start) < (1 << 20) / rate);
}

void test_idle_resets_schedule()
{
    // After a long idle period the schedule restarts: no catch-up burst.
    fake_clock clock;
    pacer p(clock, 65536, 1.05);
    run(clock, p, 1 << 20, 8192, 1e8);
    clock.t += seconds(1);
    const double elapsed = run(clock, p, 1 << 20, 8192, 1e8);
    CHECK(std::abs(elapsed - (1 << 20) / 1e8) < 1e-6);
}

void test_per_packet_rates()
{
    // Packets at different rates: the schedule is the sum of each packet's
    // time at its own rate; unpaced packets (rate 0) take none.
    fake_clock clock;
    pacer p(clock, 8192, 1.05);
    const auto start = clock.t;
    p.begin();
    for (int i = 0; i < 100; i++)
    {
        p.add(8192, 1e6);
        p.add(8192, 2e6);
        p.add(8192, 0.0);
        p.end_batch();
    }
    const double expected = 100 * (8192 / 1e6 + 8192 / 2e6);
    CHECK(std::abs(secs(clock.t - start) - expected) < 1e-6);
}

void test_burst_size()
{
    // No sleep until a burst is complete.
    fake_clock clock;
    pacer p(clock, 65536, 1.05);
    p.begin();
    for (int i = 0; i < 7; i++)
    {
        p.add(8192, 1e6);
        p.end_batch();
    }
    CHECK(clock.wakes.empty());
    p.add(8192, 1e6);
    p.end_batch();
    CHECK(clock.wakes.size() == 1);
}

void test_pause_in_mid_burst()
{
    // Half a burst, a 20 ms pause between groups (behind schedule, not idle),
    // then two bursts: the rest of the first may follow at once, but the
    // second must wait a burst time at the burst rate after the pause.
    fake_clock clock;
    const double rate = 1e7;
    pacer p(clock, 65536, 1.25);
    p.begin();
    p.add(32768, rate);
    p.end_batch();
    CHECK(clock.wakes.empty());
    clock.t += milliseconds(20);
    const auto resumed = clock.t;
    p.begin();
    p.add(32768, rate);
    p.end_batch();                       // completes the first burst
    CHECK(clock.wakes.size() == 1);
    CHECK(std::abs(secs(clock.t - resumed) - 32768 / (rate * 1.25)) < 1e-6);
}

} // anonymous namespace

int main()
{
    test_exact_rate();
    test_oversleep_does_not_drift();
    test_slow_transport_catches_up_at_burst_rate();
    test_idle_resets_schedule();
    test_per_packet_rates();
    test_burst_size();
    test_pause_in_mid_burst();
    return check_result("test_send_pacer");
}
