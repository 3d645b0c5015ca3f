#include "transport/reader_set.h"

#include <stdexcept>

#include "common/thread_pool.h"

namespace spead2::transport
{

bool reader_set::add(const std::function<std::shared_ptr<reader>(packet_sink &, worker &)> &factory,
                     packet_sink &sink, thread_pool &pool, bool stream_stopped)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (stream_stopped || closed)
        return false;
    if (explicit_start && started)
        throw std::runtime_error("Cannot add readers after explicit start");
    auto r = factory(sink, pool.pick_worker());
    readers.push_back(r);
    if (started)
        r->start();
    return true;
}

void reader_set::start(bool stream_stopped)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (started)
        return;
    started = true;
    if (!stream_stopped)
        for (auto &r : readers)
            r->start();
}

void reader_set::request_stop()
{
    std::lock_guard<std::mutex> lock(mutex);
    for (auto &r : readers)
        r->request_stop();
}

void reader_set::close()
{
    std::vector<std::shared_ptr<reader>> to_close;
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (closed)
            return;
        closed = true;
        to_close.swap(readers);
    }
    for (auto &r : to_close)
        r->request_stop();
    // A task already running on a reader's worker finishes before this returns;
    // tasks queued later see the stop flag and do nothing.
    for (auto &r : to_close)
        r->get_worker().run_sync([] {});
    for (auto &r : to_close)
        r->close();
}

} // namespace spead2::transport
