#include "transport/mem/mem_reader.h"

#include "common/logging.h"
#include "common/thread_pool.h"

namespace spead2::transport
{

// ------------------------------------------------------------ buffer_reader

namespace
{
// Whether the buffer reader should prefetch whole packets ahead of the one it
// decodes.  That depends on the CPU (bench_chunk.py worker A/Bs, alternated,
// doc/benchmarking.rst): on an Intel Xeon VM it placed 1 KiB heaps and 64 KiB
// heaps in 1472-byte packets 1.1-1.2x faster; on an AMD EPYC VM it placed
// them at 0.96x and 0.90x (geometric means of 24 and 16 pairs): there the
// hardware prefetcher follows the buffer well enough by itself.  Other CPUs
// are not measured, and are left to the hardware prefetcher too.
bool source_prefetch_helps()
{
#if defined(__x86_64__) || defined(__i386__)
    static const bool helps = [] {
        __builtin_cpu_init();
        return bool(__builtin_cpu_is("intel"));
    }();
    return helps;
#else
    return false;
#endif
}
} // anonymous namespace

buffer_reader::buffer_reader(packet_sink &sink, worker &thread, const std::uint8_t *data, std::size_t size)
    : reader(sink, thread), data(data), size(size)
{
}

void buffer_reader::start()
{
    auto self = std::static_pointer_cast<buffer_reader>(shared_from_this());
    thread.post([self] { self->run(); });
}

void buffer_reader::run()
{
    if (stopping.load())
        return;
    batch b(sink);
    if (!b.active())
        return;
    // One packet at a time, in buffer order.  Whole packets ahead are
    // prefetched (as the pcap reader does; transport/reader.h) only where that
    // measured faster: see source_prefetch_helps.
    const bool prefetch = source_prefetch_helps();
    protocol::packet_header ph;
    std::size_t pos = 0;
    while (pos < size)
    {
        auto status = protocol::decode_packet(ph, data + pos, size - pos);
        if (status != protocol::decode_status::ok)
        {
            log_info("buffer reader stopped at byte %zu of %zu: %s", pos, size, protocol::describe(status));
            b.malformed(1);
            break;
        }
        pos += ph.size;
        if (prefetch)
            prefetch_ahead(data + pos, ph.size, data + size);
        if (!b.add(&ph, 1))
            return;
    }
    b.end_of_stream();
}

// ------------------------------------------------------------- inproc_queue

void inproc_queue::add_packet(const std::uint8_t *data, std::size_t size)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (stopped)
        throw std::runtime_error("cannot add a packet to a stopped InprocQueue");
    packets.emplace_back(data, data + size);
    readable.update(true);
}

void inproc_queue::stop()
{
    std::lock_guard<std::mutex> lock(mutex);
    stopped = true;
    readable.update(true);
}

int inproc_queue::fd() const
{
    std::lock_guard<std::mutex> lock(mutex);
    return readable.get(stopped || !packets.empty());
}

bool inproc_queue::pop(std::vector<std::uint8_t> &out, bool &is_stopped)
{
    std::lock_guard<std::mutex> lock(mutex);
    is_stopped = stopped;
    if (packets.empty())
        return false;
    out = std::move(packets.front());
    packets.pop_front();
    readable.update(stopped || !packets.empty());
    return true;
}

// ------------------------------------------------------------ inproc_reader

inproc_reader::inproc_reader(packet_sink &sink, worker &thread, std::shared_ptr<inproc_queue> queue)
    : reader(sink, thread), queue(std::move(queue))
{
}

void inproc_reader::start()
{
    auto self = std::static_pointer_cast<inproc_reader>(shared_from_this());
    thread.post([self] {
        if (self->stopping.load())
            return;
        self->thread.add_fd(self->queue->fd(), [self] { self->on_readable(); });
        self->registered = true;
    });
}

void inproc_reader::unregister()
{
    if (registered)
    {
        thread.remove_fd(queue->fd());
        registered = false;
    }
}

void inproc_reader::on_stop_requested()
{
    auto self = std::static_pointer_cast<inproc_reader>(shared_from_this());
    thread.post([self] { self->unregister(); });
}

void inproc_reader::on_readable()
{
    if (stopping.load())
    {
        unregister();
        return;
    }
    std::vector<std::uint8_t> packet;
    bool queue_stopped;
    bool have = queue->pop(packet, queue_stopped);
    batch b(sink);
    if (!b.active())
    {
        unregister();
        return;
    }
    if (have)
    {
        protocol::packet_header ph;
        if (protocol::decode_datagram(ph, packet.data(), packet.size()))
            b.add(&ph, 1);
        else
            b.malformed(1);
    }
    else if (queue_stopped)
    {
        b.end_of_stream();
        unregister();
    }
}

} // namespace spead2::transport
