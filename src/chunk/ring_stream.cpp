#include "chunk/ring_stream.h"

#include <cstring>

#include "common/logging.h"

namespace spead2::chunk
{

chunk_ring_stream::chunk_ring_stream(std::shared_ptr<thread_pool> pool,
                                     const stream_config &config,
                                     const chunk_stream_config &chunk_config,
                                     std::shared_ptr<chunk_ringbuffer> data_ring_,
                                     std::shared_ptr<chunk_ringbuffer> free_ring_)
    : chunk_stream(std::move(pool), config, chunk_config,
                   [this](std::int64_t id, std::uint64_t *) { return take_free(id); },
                   [this](std::unique_ptr<chunk> &&c, std::uint64_t *) { give_ready(std::move(c)); }),
      data_ring(std::move(data_ring_)),
      free_ring(std::move(free_ring_))
{
    if (!data_ring || !free_ring)
        throw std::invalid_argument("data_ringbuffer and free_ringbuffer must not be None");
    data_ring->add_producer();
}

chunk_ring_stream::~chunk_ring_stream()
{
    chunk_ring_stream::stop();
}

std::unique_ptr<chunk> chunk_ring_stream::take_free(std::int64_t)
{
    try
    {
        return free_ring->pop();
    }
    catch (ringbuffer_stopped &)
    {
        return nullptr;
    }
}

void chunk_ring_stream::give_ready(std::unique_ptr<chunk> &&c)
{
    try
    {
        data_ring->push(c);
    }
    catch (ringbuffer_stopped &)
    {
        log_info("dropped chunk %lld due to external stop", (long long) c->chunk_id);
        std::lock_guard<std::mutex> lock(graveyard_mutex);
        graveyard.push_back(std::move(c));
    }
}

void chunk_ring_stream::network_stop_hook()
{
    data_ring->remove_producer();
}

void chunk_ring_stream::stop()
{
    free_ring->stop();
    data_ring->stop();
    chunk_stream::stop();
    std::vector<std::unique_ptr<chunk>> dead;
    {
        std::lock_guard<std::mutex> lock(graveyard_mutex);
        dead.swap(graveyard);
    }
    dead.clear();
}

void add_free_chunk(chunk_ringbuffer &free_ring, std::unique_ptr<chunk> &&c)
{
    if (c->present && c->present_size)
        std::memset(c->present, 0, c->present_size);
    try
    {
        free_ring.try_push(c);
    }
    catch (ringbuffer_stopped &)
    {
        // As in the reference: returning a chunk to a stopped stream is not an error.
    }
}

} // namespace spead2::chunk
