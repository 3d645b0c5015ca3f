// Logging bridge.  The core logs through these functions from any thread;
// the messages are queued and delivered by the bindings to the Python logger
// "spead2" (or to stderr when no sink is installed).  Never blocks the caller.
#pragma once

#include <cstdarg>
#include <functional>
#include <string>

namespace spead2
{

enum class log_level : int
{
    debug = 10,
    info = 20,
    warning = 30,
    error = 40,
};

/// Messages below this level are not even formatted (cheap check on hot paths).
void set_log_threshold(log_level level);
bool log_enabled(log_level level);

void log_message(log_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));

#define SPEAD2_LOG_AT(level, ...) \
    do { if (::spead2::log_enabled(level)) ::spead2::log_message(level, __VA_ARGS__); } while (0)
#define log_debug(...) SPEAD2_LOG_AT(::spead2::log_level::debug, __VA_ARGS__)
#define log_info(...) SPEAD2_LOG_AT(::spead2::log_level::info, __VA_ARGS__)
#define log_warning(...) SPEAD2_LOG_AT(::spead2::log_level::warning, __VA_ARGS__)
#define log_error(...) SPEAD2_LOG_AT(::spead2::log_level::error, __VA_ARGS__)

/// Install the function that receives formatted messages.  It is called on
/// the log delivery thread, never on the thread that logged.  Passing an empty
/// function restores the stderr sink.
using log_sink = std::function<void(log_level, const std::string &)>;
void set_log_sink(log_sink sink);

/// Stop the delivery thread after delivering what is queued (idempotent).
void stop_log_delivery();

/// Number of messages lost because the queue was full.
unsigned long log_messages_dropped();

} // namespace spead2
