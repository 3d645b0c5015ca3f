#include "chunk/ring_stream.h"

#include <cstring>
#include <stdexcept>

#include "common/logging.h"

namespace spead2::chunk
{

// --------------------------------------------------------------- ring pair

chunk_ring_pair::chunk_ring_pair(std::shared_ptr<chunk_ringbuffer> data_ring_,
                                 std::shared_ptr<chunk_ringbuffer> free_ring_)
    : data_ring(std::move(data_ring_)), free_ring(std::move(free_ring_))
{
    if (!data_ring || !free_ring)
        throw std::invalid_argument("data_ringbuffer and free_ringbuffer must not be None");
}

std::unique_ptr<chunk> chunk_ring_pair::take_free()
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

void chunk_ring_pair::give_ready(std::unique_ptr<chunk> &&c)
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

void chunk_ring_pair::stop_rings()
{
    free_ring->stop();
    data_ring->stop();
}

void chunk_ring_pair::bury_graveyard()
{
    std::vector<std::unique_ptr<chunk>> dead;
    {
        std::lock_guard<std::mutex> lock(graveyard_mutex);
        dead.swap(graveyard);
    }
    dead.clear();
}

// ------------------------------------------------------------- ring stream

chunk_ring_stream::chunk_ring_stream(std::shared_ptr<thread_pool> pool,
                                     const stream_config &config,
                                     const chunk_stream_config &chunk_config,
                                     std::shared_ptr<chunk_ringbuffer> data_ring_,
                                     std::shared_ptr<chunk_ringbuffer> free_ring_)
    : chunk_ring_pair(std::move(data_ring_), std::move(free_ring_)),
      chunk_stream(std::move(pool), config, chunk_config, make_allocate(), make_ready())
{
    data_ring->add_producer();
}

chunk_ring_stream::~chunk_ring_stream()
{
    chunk_ring_stream::stop();
}

void chunk_ring_stream::network_stop_hook()
{
    data_ring->remove_producer();
}

void chunk_ring_stream::stop()
{
    stop_rings();
    chunk_stream::stop();
    bury_graveyard();
}

// -------------------------------------------------------------- ring group

chunk_ring_group::chunk_ring_group(const chunk_group_config &config,
                                   std::shared_ptr<chunk_ringbuffer> data_ring_,
                                   std::shared_ptr<chunk_ringbuffer> free_ring_)
    : chunk_ring_pair(std::move(data_ring_), std::move(free_ring_)),
      chunk_group(config, make_allocate(), make_ready())
{
}

chunk_ring_group::~chunk_ring_group()
{
    chunk_ring_group::stop();
}

void chunk_ring_group::member_added(chunk_group_member &)
{
    data_ring->add_producer();
}

void chunk_ring_group::member_network_stopped(chunk_group_member &)
{
    data_ring->remove_producer();
}

void chunk_ring_group::stop()
{
    stop_rings();
    chunk_group::stop();
    bury_graveyard();
}

// ----------------------------------------------------------------- helpers

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
