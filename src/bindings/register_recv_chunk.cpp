// Python bindings for chunk-at-a-time receiving: Chunk, ChunkRingbuffer,
// ChunkRingPair and ChunkRingStream (a chunk stream that delivers to a data
// ring and takes empty chunks from a free ring; src/chunk/ring_stream.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "bindings/py_chunk.h"
#include "bindings/recv_parts.h"
#include "chunk/ring_stream.h"

namespace spead2::bindings
{

using namespace spead2::chunk;

void py_ring_pair::add_free_chunk(py::handle obj)
{
    // The present flags are zeroed through the C++ view of the buffers.
    auto c = chunk_to_cpp(obj);
    if (c->present_size)
        std::memset(c->present, 0, c->present_size);
    try
    {
        free_ring->try_push(c);
    }
    catch (ringbuffer_stopped &)
    {
        // Ignored, as in the reference; the chunk's buffers are released.
        c.reset();
    }
    catch (...)
    {
        chunk_to_python(std::move(c));
        throw;
    }
}

namespace
{

// A spin longer than this would delay Ctrl-C (interruptible polls for signals
// every SIGNAL_POLL_INTERVAL) and is no longer a short wait.
constexpr double MAX_SPIN_US = 10000.0;

py::object ring_get(chunk_ringbuffer &ring)
{
    auto item = interruptible([&] { return ring.pop_for(SIGNAL_POLL_INTERVAL); });
    return chunk_to_python(std::move(*item));
}

void ring_put(chunk_ringbuffer &ring, py::handle obj)
{
    auto c = chunk_to_cpp(obj);
    try
    {
        interruptible([&] { return ring.push_for(c, SIGNAL_POLL_INTERVAL); });
    }
    catch (...)
    {
        if (c)
            chunk_to_python(std::move(c));   // give the buffers back
        throw;
    }
}

void ring_put_nowait(chunk_ringbuffer &ring, py::handle obj)
{
    auto c = chunk_to_cpp(obj);
    try
    {
        ring.try_push(c);
    }
    catch (...)
    {
        if (c)
            chunk_to_python(std::move(c));
        throw;
    }
}

struct py_chunk_ring_stream : public py_ring_pair, public py_stream
{
    std::unique_ptr<chunk_ring_stream> stream;

    ~py_chunk_ring_stream() override
    {
        if (stream)
        {
            unregister_stoppable(stream.get());
            stream.reset();   // stops readers before the buffers they read are released
        }
    }

    transport::stream_control &get() override
    {
        if (!stream)
            throw std::runtime_error("stream has been destroyed");
        return *stream;
    }
};

} // anonymous namespace

void register_recv_chunks(py::module_ &recv)
{
    // ---- Chunk
    const chunk_object chunk_defaults;
    py::class_<chunk_object>(recv, "Chunk")
        .def(py::init([](std::int64_t chunk_id, std::uintptr_t stream_id, py::object present, py::object data,
                         py::object extra) {
                 check_chunk_buffer(present);
                 check_chunk_buffer(data);
                 check_chunk_buffer(extra);
                 chunk_object c;
                 c.chunk_id = chunk_id;
                 c.stream_id = stream_id;
                 c.present = std::move(present);
                 c.data = std::move(data);
                 c.extra = std::move(extra);
                 return c;
             }),
             py::kw_only(),
             py::arg("chunk_id") = chunk_defaults.chunk_id,
             py::arg("stream_id") = chunk_defaults.stream_id,
             py::arg("present") = py::none(),
             py::arg("data") = py::none(),
             py::arg("extra") = py::none())
        .def_readwrite("chunk_id", &chunk_object::chunk_id)
        .def_readwrite("stream_id", &chunk_object::stream_id)
        .def_readwrite("first_packet_time", &chunk_object::first_packet_time,
                       "When the first packet written into the chunk arrived (ns; -1: none)")
        .def_readwrite("last_packet_time", &chunk_object::last_packet_time,
                       "When the last packet written into the chunk arrived (ns; -1: none)")
        .def_property("data", [](const chunk_object &c) { return c.data; },
                      [](chunk_object &c, py::object v) { check_chunk_buffer(v); c.data = std::move(v); })
        .def_property("present", [](const chunk_object &c) { return c.present; },
                      [](chunk_object &c, py::object v) { check_chunk_buffer(v); c.present = std::move(v); })
        .def_property("extra", [](const chunk_object &c) { return c.extra; },
                      [](chunk_object &c, py::object v) { check_chunk_buffer(v); c.extra = std::move(v); });

    // ---- ChunkRingbuffer
    py::class_<chunk_ringbuffer, std::shared_ptr<chunk_ringbuffer>>(recv, "ChunkRingbuffer")
        .def(py::init([](std::size_t maxsize, double spin_us) {
                 if (!(spin_us >= 0.0 && spin_us <= MAX_SPIN_US))
                     throw py::value_error("spin_us must be between 0 and " + std::to_string(int(MAX_SPIN_US)));
                 auto ring = std::make_shared<chunk_ringbuffer>(maxsize);
                 ring->set_spin(std::chrono::nanoseconds(std::int64_t(spin_us * 1000.0)));
                 return ring;
             }),
             py::arg("maxsize"), py::kw_only(), py::arg("spin_us") = 0.0)
        .def_property_readonly("maxsize", &chunk_ringbuffer::capacity)
        .def_property_readonly("spin_us", [](const chunk_ringbuffer &r) { return r.get_spin().count() / 1000.0; })
        .def_property_readonly("data_fd", &chunk_ringbuffer::data_fd)
        .def_property_readonly("space_fd", &chunk_ringbuffer::space_fd)
        .def("qsize", &chunk_ringbuffer::size)
        .def("empty", [](const chunk_ringbuffer &r) { return r.size() == 0; })
        .def("full", [](const chunk_ringbuffer &r) { return r.size() == r.capacity(); })
        .def("get", &ring_get)
        .def("get_nowait", [](chunk_ringbuffer &r) { return chunk_to_python(r.try_pop()); })
        .def("put", &ring_put, py::arg("chunk"))
        .def("put_nowait", &ring_put_nowait, py::arg("chunk"))
        .def("stop", &chunk_ringbuffer::stop)
        .def_property_readonly("high_water_mark", [](const chunk_ringbuffer &r) { return r.get_health().high_water; },
                               "The most chunks the ring has held at once (see reset_high_water_mark)")
        .def_property_readonly("blocked_puts", [](const chunk_ringbuffer &r) { return r.get_health().blocked_pushes; },
                               "How often a stream's worker found the ring full when delivering a chunk "
                               "(and had to wait: the data ring's consumer is too slow)")
        .def_property_readonly("blocked_gets", [](const chunk_ringbuffer &r) { return r.get_health().blocked_pops; },
                               "How often a stream's worker found the ring empty when it needed a free "
                               "chunk (and had to wait: too few chunks, or they come back too late)")
        .def("reset_high_water_mark", &chunk_ringbuffer::reset_high_water)
        .def("add_producer", &chunk_ringbuffer::add_producer)
        .def("remove_producer", &chunk_ringbuffer::remove_producer)
        .def("__iter__", [](py::object self) { return self; })
        .def("__next__", [](chunk_ringbuffer &r) {
            try
            {
                return ring_get(r);
            }
            catch (ringbuffer_stopped &)
            {
                throw py::stop_iteration();
            }
        });

    // ---- ChunkRingPair / ChunkRingStream
    py::class_<py_ring_pair>(recv, "ChunkRingPair")
        .def("add_free_chunk", &py_ring_pair::add_free_chunk, py::arg("chunk"))
        .def_readonly("data_ringbuffer", &py_ring_pair::data_ringbuffer)
        .def_readonly("free_ringbuffer", &py_ring_pair::free_ringbuffer);

    py::class_<py_chunk_ring_stream, py_ring_pair, py_stream>(recv, "ChunkRingStream")
        .def(py::init([](py::object thread_pool, const py_stream_config &config,
                         const py_chunk_stream_config &chunk_stream_config,
                         py::object data_ringbuffer, py::object free_ringbuffer) {
                 if (thread_pool.is_none())
                     throw py::type_error("thread_pool must not be None");
                 if (data_ringbuffer.is_none() || free_ringbuffer.is_none())
                     throw py::type_error("ringbuffers must not be None");
                 auto pool = thread_pool.cast<std::shared_ptr<spead2::thread_pool>>();
                 auto data = data_ringbuffer.cast<std::shared_ptr<chunk_ringbuffer>>();
                 auto free = free_ringbuffer.cast<std::shared_ptr<chunk_ringbuffer>>();
                 auto self = std::make_unique<py_chunk_ring_stream>();
                 self->stream = std::make_unique<chunk_ring_stream>(
                     pool, config.cfg, chunk_stream_config.cfg, data, free);
                 self->data_ringbuffer = data_ringbuffer;
                 self->free_ringbuffer = free_ringbuffer;
                 self->free_ring = free;
                 self->place = chunk_stream_config.place;
                 self->thread_pool = thread_pool;
                 chunk_ring_stream *raw = self->stream.get();
                 register_stoppable(raw, [raw] { raw->stop(); });
                 return self;
             }),
             py::arg("thread_pool"), py::arg_v("config", py_stream_config(), "StreamConfig()"),
             py::arg("chunk_stream_config"), py::arg("data_ringbuffer"), py::arg("free_ringbuffer"));
}

} // namespace spead2::bindings
