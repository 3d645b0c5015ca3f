// A chunk stream whose chunks come from a "free" ringbuffer and go to a
// "data" ringbuffer (the reference's ChunkRingStream).
//
// allocate = blocking pop from the free ring (nullptr once it is stopped);
// ready = blocking push to the data ring, or, if that ring has been stopped,
// into a graveyard that is emptied by stop() on the caller's thread (so that
// chunks owning Python buffers are released where that is safe).
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "chunk/chunk_stream.h"
#include "common/ringbuffer.h"

namespace spead2::chunk
{

using chunk_ringbuffer = ringbuffer<std::unique_ptr<chunk>>;

class chunk_ring_stream : public chunk_stream
{
    std::shared_ptr<chunk_ringbuffer> data_ring;
    std::shared_ptr<chunk_ringbuffer> free_ring;
    std::mutex graveyard_mutex;
    std::vector<std::unique_ptr<chunk>> graveyard;

    std::unique_ptr<chunk> take_free(std::int64_t chunk_id);
    void give_ready(std::unique_ptr<chunk> &&c);

protected:
    void network_stop_hook() override;

public:
    chunk_ring_stream(std::shared_ptr<thread_pool> pool,
                      const stream_config &config,
                      const chunk_stream_config &chunk_config,
                      std::shared_ptr<chunk_ringbuffer> data_ring,
                      std::shared_ptr<chunk_ringbuffer> free_ring);
    ~chunk_ring_stream() override;

    const std::shared_ptr<chunk_ringbuffer> &get_data_ringbuffer() const { return data_ring; }
    const std::shared_ptr<chunk_ringbuffer> &get_free_ringbuffer() const { return free_ring; }

    /// Stop both rings, then the stream; chunks still under construction are
    /// not delivered.  Frees the graveyard on the calling thread.
    void stop() override;
};

/// Zero a chunk's present flags and return it to a free ring.  Throws
/// ringbuffer_full if the ring is full; silently drops it if stopped.
void add_free_chunk(chunk_ringbuffer &free_ring, std::unique_ptr<chunk> &&c);

} // namespace spead2::chunk
