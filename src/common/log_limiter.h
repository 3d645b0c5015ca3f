// Rate-limited logging for problems that can happen once per packet.
//
// A flood of bad packets must not become a flood of log lines (each one is
// formatted, queued and handed to Python).  A log_limiter lets the first few
// occurrences of each kind be logged one by one, then only counts them, and
// emits a summary of what it counted ("12345 packets dropped in the last
// 10.0 s: 12000 out-of-order, 345 malformed") at most once per interval, or
// when asked (a stream stopping).  Counting is an atomic increment; the
// summary check at the end of a batch is one relaxed load when nothing was
// suppressed.  Statistics are kept elsewhere and stay exact.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/logging.h"

namespace spead2
{

class log_limiter
{
public:
    struct kind
    {
        const char *name;    ///< for the summary, e.g. "out-of-order"
        log_level level;     ///< the level its messages are logged at
    };

    /// @a subject: what is counted, e.g. "packets dropped".
    log_limiter(const char *subject, std::vector<kind> kinds);

    /// Note one occurrence of kind @a k.  Returns true if the caller should
    /// log it itself (one of the first ones); otherwise it is only counted.
    bool note(std::size_t k);
    /// Log a summary of what was counted but not logged, if the interval has
    /// passed since the last one (or @a force).
    void summarise(bool force = false)
    {
        if (pending.load(std::memory_order_relaxed) || force)
            summarise_slow(force);
    }

private:
    using clock = std::chrono::steady_clock;
    const char *subject;
    std::vector<kind> kinds;
    std::unique_ptr<std::atomic<std::uint64_t>[]> logged;
    std::unique_ptr<std::atomic<std::uint64_t>[]> suppressed;
    std::atomic<bool> pending{false};
    std::mutex mutex;
    clock::time_point last_summary;

    void summarise_slow(bool force);
};

/// Process-wide settings (tests lower them): how many occurrences of each
/// kind are logged one by one, and the shortest time between summaries.
void set_log_limits(std::size_t first_logged, double summary_interval_s);
std::size_t log_limit_first();
double log_limit_interval();

} // namespace spead2
