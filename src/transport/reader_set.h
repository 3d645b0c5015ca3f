// The readers of one stream: attaching them (held back until start() with
// explicit_start), asking them to stop, and closing them.  Chunk streams and
// heap streams both keep one.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/reader.h"

namespace spead2
{
class thread_pool;
}

namespace spead2::transport
{

class reader_set
{
    std::mutex mutex;
    std::vector<std::shared_ptr<reader>> readers;
    const bool explicit_start;
    bool started;
    bool closed = false;

public:
    explicit reader_set(bool explicit_start) : explicit_start(explicit_start), started(!explicit_start) {}

    /// Make a reader with @a factory on the pool's next worker and attach it
    /// (started now unless held back).  Returns false, making nothing, if
    /// @a stream_stopped or the set was closed (readers added after a stop are
    /// ignored, as in the reference).  Throws std::runtime_error after an
    /// explicit start.
    bool add(const std::function<std::shared_ptr<reader>(packet_sink &, worker &)> &factory,
             packet_sink &sink, thread_pool &pool, bool stream_stopped);
    /// Start the readers held back by explicit_start (unless @a stream_stopped).
    void start(bool stream_stopped);
    /// Ask every reader to stop (any thread, also inside a batch).
    void request_stop();
    /// Stop every reader, wait for tasks already running on their workers,
    /// and close them (idempotent; never with the stream lock held).
    void close();
};

} // namespace spead2::transport
