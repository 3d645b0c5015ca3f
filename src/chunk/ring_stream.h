// Chunk streams and chunk stream groups whose chunks come from a "free"
// ringbuffer and go to a "data" ringbuffer (the reference's ChunkRingStream
// and ChunkStreamRingGroup).
//
// allocate = blocking pop from the free ring (nullptr once it is stopped);
// ready = blocking push to the data ring, or, if that ring has been stopped,
// into a graveyard that is emptied by stop() on the caller's thread (so that
// chunks owning Python buffers are released where that is safe).
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "chunk/chunk_group.h"
#include "chunk/chunk_stream.h"
#include "common/ringbuffer.h"

namespace spead2::chunk
{

using chunk_ringbuffer = ringbuffer<std::unique_ptr<chunk>>;

/// The two rings and the graveyard, shared by ring streams and ring groups.
class chunk_ring_pair
{
protected:
    std::shared_ptr<chunk_ringbuffer> data_ring;
    std::shared_ptr<chunk_ringbuffer> free_ring;

    chunk_ring_pair(std::shared_ptr<chunk_ringbuffer> data_ring, std::shared_ptr<chunk_ringbuffer> free_ring);

    std::unique_ptr<chunk> take_free();
    void give_ready(std::unique_ptr<chunk> &&c);
    allocate_function make_allocate() { return [this](std::int64_t, std::uint64_t *) { return take_free(); }; }
    ready_function make_ready()
    {
        return [this](std::unique_ptr<chunk> &&c, std::uint64_t *) { give_ready(std::move(c)); };
    }
    /// Stop both rings: producers and consumers blocked on them are released.
    void stop_rings();
    /// Free the chunks that could not be delivered, on the calling thread.
    void bury_graveyard();

private:
    std::mutex graveyard_mutex;
    std::vector<std::unique_ptr<chunk>> graveyard;

public:
    virtual ~chunk_ring_pair() = default;
    const std::shared_ptr<chunk_ringbuffer> &get_data_ringbuffer() const { return data_ring; }
    const std::shared_ptr<chunk_ringbuffer> &get_free_ringbuffer() const { return free_ring; }
};

class chunk_ring_stream : public chunk_ring_pair, public chunk_stream
{
protected:
    void network_stop_hook() override;

public:
    chunk_ring_stream(std::shared_ptr<thread_pool> pool,
                      const stream_config &config,
                      const chunk_stream_config &chunk_config,
                      std::shared_ptr<chunk_ringbuffer> data_ring,
                      std::shared_ptr<chunk_ringbuffer> free_ring);
    ~chunk_ring_stream() override;

    /// Stop both rings, then the stream; chunks still under construction are
    /// not delivered.  Frees the graveyard on the calling thread.
    void stop() override;
};

/// A group whose chunks come from and go to rings.  Every member is a
/// producer of the data ring until its data ends; stopping the group stops
/// both rings, then the members.
class chunk_ring_group : public chunk_ring_pair, public chunk_group
{
protected:
    void member_added(chunk_group_member &) override;
    void member_network_stopped(chunk_group_member &) override;

public:
    chunk_ring_group(const chunk_group_config &config,
                     std::shared_ptr<chunk_ringbuffer> data_ring,
                     std::shared_ptr<chunk_ringbuffer> free_ring);
    ~chunk_ring_group() override;

    void stop() override;
};

/// Zero a chunk's present flags and return it to a free ring.  Throws
/// ringbuffer_full if the ring is full; silently drops it if stopped.
void add_free_chunk(chunk_ringbuffer &free_ring, std::unique_ptr<chunk> &&c);

} // namespace spead2::chunk
