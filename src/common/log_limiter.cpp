#include "common/log_limiter.h"

#include <cinttypes>

namespace spead2
{

namespace
{
std::atomic<std::size_t> first_logged{5};
std::atomic<double> interval_s{10.0};
}

void set_log_limits(std::size_t first, double interval)
{
    first_logged.store(first);
    interval_s.store(interval);
}

std::size_t log_limit_first() { return first_logged.load(std::memory_order_relaxed); }
double log_limit_interval() { return interval_s.load(std::memory_order_relaxed); }

log_limiter::log_limiter(const char *subject, std::vector<kind> kinds_)
    : subject(subject),
      kinds(std::move(kinds_)),
      logged(new std::atomic<std::uint64_t>[kinds.size()]),
      suppressed(new std::atomic<std::uint64_t>[kinds.size()]),
      last_summary(clock::now())
{
    for (std::size_t i = 0; i < kinds.size(); i++)
    {
        logged[i].store(0);
        suppressed[i].store(0);
    }
}

bool log_limiter::note(std::size_t k)
{
    if (!log_enabled(kinds[k].level))
        return false;   // nobody would see it: neither log nor summarise
    const std::uint64_t n = logged[k].fetch_add(1, std::memory_order_relaxed);
    if (n < log_limit_first())
        return true;
    if (n == log_limit_first())
        log_message(kinds[k].level, "further %s (%s) are counted and summarised every %.1f s",
                    subject, kinds[k].name, log_limit_interval());
    suppressed[k].fetch_add(1, std::memory_order_relaxed);
    pending.store(true, std::memory_order_relaxed);
    return false;
}

void log_limiter::summarise_slow(bool force)
{
    std::lock_guard<std::mutex> lock(mutex);
    const auto now = clock::now();
    const double elapsed = std::chrono::duration<double>(now - last_summary).count();
    if (!force && elapsed < log_limit_interval())
        return;
    pending.store(false, std::memory_order_relaxed);
    std::uint64_t total = 0;
    log_level level = log_level::debug;
    std::string parts;
    for (std::size_t i = 0; i < kinds.size(); i++)
    {
        const std::uint64_t n = suppressed[i].exchange(0, std::memory_order_relaxed);
        if (!n)
            continue;
        total += n;
        if (kinds[i].level > level)
            level = kinds[i].level;
        parts += (parts.empty() ? "" : ", ") + std::to_string(n) + " " + kinds[i].name;
    }
    last_summary = now;
    if (total)
        log_message(level, "%" PRIu64 " %s in the last %.1f s (not logged one by one): %s",
                    total, subject, elapsed, parts.c_str());
}

} // namespace spead2
