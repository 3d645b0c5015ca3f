// In-memory transports.
//
// buffer_reader: a buffer of concatenated SPEAD packets, decoded in place
// (zero copy) as one batch; the first undecodable packet ends it; the stream
// then stops (end of stream).
//
// inproc_queue / inproc_reader: an unbounded in-process packet queue
// (add_packet copies); the reader delivers one packet per batch and stops
// the stream once the queue is stopped and drained.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "common/ringbuffer.h"
#include "transport/reader.h"

namespace spead2::transport
{

class buffer_reader : public reader
{
    const std::uint8_t *data;
    std::size_t size;
    void run();
public:
    /// The caller keeps the buffer alive until the reader is closed.
    buffer_reader(packet_sink &sink, worker &thread, const std::uint8_t *data, std::size_t size);
    void start() override;
};

class inproc_queue
{
    mutable std::mutex mutex;
    std::deque<std::vector<std::uint8_t>> packets;
    bool stopped = false;
    mutable level_fd readable;   ///< readable while packets are queued or the queue is stopped
public:
    void add_packet(const std::uint8_t *data, std::size_t size);
    void stop();
    /// Pop one packet; returns false if none (then *is_stopped says why).
    bool pop(std::vector<std::uint8_t> &out, bool &is_stopped);
    int fd() const;
};

class inproc_reader : public reader
{
    std::shared_ptr<inproc_queue> queue;
    bool registered = false;
    void on_readable();
    void unregister();
protected:
    void on_stop_requested() override;
public:
    inproc_reader(packet_sink &sink, worker &thread, std::shared_ptr<inproc_queue> queue);
    void start() override;
};

} // namespace spead2::transport
