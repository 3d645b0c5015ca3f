// Python bindings for heap-at-a-time receiving: RingStreamConfig, Stream,
// HeapBase / Heap / IncompleteHeap and RawItem.  Translation only: assembly
// lives in src/heap.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>

#include "bindings/module.h"
#include "bindings/py_stream.h"
#include "heap/heap_stream.h"

namespace spead2::bindings
{

namespace
{

using heap::heap_ringbuffer;
using heap::heap_stream;
using heap::received_heap;
using heap::ring_stream_config;

struct py_heap
{
    std::unique_ptr<received_heap> h;
};

/// One item of a heap; keeps the heap object (and so its payload) alive.
struct py_raw_item
{
    py::object owner;
    std::uint64_t id = 0;
    bool immediate = false;
    std::uint64_t value = 0;
    const std::uint8_t *data = nullptr;
    std::size_t length = 0;
    std::uint8_t imm[8] = {};
};

py::list heap_items(py::object self, bool descriptors)
{
    const received_heap &h = *self.cast<py_heap &>().h;
    py::list out;
    for (const auto &it : h.items(descriptors))
    {
        auto item = std::make_unique<py_raw_item>();
        item->owner = self;
        item->id = it.id;
        item->immediate = it.immediate;
        item->value = it.value;
        item->length = it.immediate ? std::min<std::size_t>(it.length, sizeof(item->imm)) : it.length;
        if (it.immediate)
        {
            // The immediate's bytes, big-endian, as they were on the wire.
            for (std::size_t i = 0; i < item->length; i++)
                item->imm[i] = std::uint8_t(it.value >> (8 * (item->length - 1 - i)));
        }
        else
            item->data = it.data;
        out.append(py::cast(std::move(item)));
    }
    return out;
}

struct py_heap_stream : public py_stream
{
    std::unique_ptr<heap_stream> stream;
    py::object ring_config;

    ~py_heap_stream() override
    {
        if (stream)
        {
            unregister_stoppable(stream.get());
            stream.reset();
        }
    }
    transport::stream_control &get() override
    {
        if (!stream)
            throw std::runtime_error("stream has been destroyed");
        return *stream;
    }
    heap_stream &heaps()
    {
        if (!stream)
            throw std::runtime_error("stream has been destroyed");
        return *stream;
    }
};

} // anonymous namespace

void register_heap_stream(py::module_ &recv)
{
    const ring_stream_config ring_defaults;
    py::class_<ring_stream_config>(recv, "RingStreamConfig")
        .def(py::init([](std::size_t heaps, bool contiguous_only, bool incomplete_keep_payload_ranges) {
                 ring_stream_config c;
                 c.set_heaps(heaps)
                     .set_contiguous_only(contiguous_only)
                     .set_incomplete_keep_payload_ranges(incomplete_keep_payload_ranges);
                 return c;
             }),
             py::kw_only(),
             py::arg("heaps") = ring_defaults.get_heaps(),
             py::arg("contiguous_only") = ring_defaults.get_contiguous_only(),
             py::arg("incomplete_keep_payload_ranges") = ring_defaults.get_incomplete_keep_payload_ranges())
        .def_readonly_static("DEFAULT_HEAPS", &heap::DEFAULT_RING_HEAPS)
        .def_property("heaps", &ring_stream_config::get_heaps,
                      [](ring_stream_config &c, std::size_t v) { c.set_heaps(v); })
        .def_property("contiguous_only", &ring_stream_config::get_contiguous_only,
                      [](ring_stream_config &c, bool v) { c.set_contiguous_only(v); })
        .def_property("incomplete_keep_payload_ranges", &ring_stream_config::get_incomplete_keep_payload_ranges,
                      [](ring_stream_config &c, bool v) { c.set_incomplete_keep_payload_ranges(v); })
        .def("__copy__", [](const ring_stream_config &c) { return ring_stream_config(c); })
        .def("__deepcopy__", [](const ring_stream_config &c, py::dict) { return ring_stream_config(c); });

    py::class_<py_raw_item>(recv, "RawItem", py::buffer_protocol())
        .def_readonly("id", &py_raw_item::id)
        .def_readonly("is_immediate", &py_raw_item::immediate)
        .def_property_readonly("immediate_value", [](const py_raw_item &it) {
            if (!it.immediate)
                throw std::logic_error("item is not an immediate item");
            return it.value;
        })
        .def_buffer([](py_raw_item &it) {
            const std::uint8_t *ptr = it.immediate ? it.imm : it.data;
            return py::buffer_info(const_cast<std::uint8_t *>(ptr), 1, "B", 1,
                                   {py::ssize_t(it.length)}, {py::ssize_t(1)}, true);
        });

    py::class_<py_heap>(recv, "HeapBase")
        .def_property_readonly("cnt", [](const py_heap &h) { return h.h->cnt; })
        .def_property_readonly("_heap_address_bits", [](const py_heap &h) { return h.h->heap_address_bits; })
        .def_property_readonly("_bug_compat", [](const py_heap &h) { return h.h->bug_compat; })
        .def("get_items", [](py::object self) { return heap_items(self, false); })
        .def("_get_descriptor_items", [](py::object self) { return heap_items(self, true); })
        .def("is_start_of_stream", [](const py_heap &h) { return h.h->start_of_stream(); })
        .def("is_end_of_stream", [](const py_heap &h) { return h.h->end_of_stream; });
    struct py_complete_heap : py_heap {};
    struct py_incomplete_heap : py_heap {};
    py::class_<py_complete_heap, py_heap>(recv, "Heap");
    py::class_<py_incomplete_heap, py_heap>(recv, "IncompleteHeap")
        .def_property_readonly("heap_length", [](const py_heap &h) { return h.h->heap_length; })
        .def_property_readonly("received_length", [](const py_heap &h) { return h.h->received_length; })
        .def_property_readonly("payload_ranges", [](const py_heap &h) { return h.h->payload_ranges; });

    auto to_python = [](std::unique_ptr<received_heap> &&h) -> py::object {
        if (h->contiguous)
        {
            auto w = std::make_unique<py_complete_heap>();
            w->h = std::move(h);
            return py::cast(std::move(w));
        }
        auto w = std::make_unique<py_incomplete_heap>();
        w->h = std::move(h);
        return py::cast(std::move(w));
    };

    py::class_<py_heap_stream, py_stream> stream_cls(recv, "Stream");
    py::class_<heap_ringbuffer, std::shared_ptr<heap_ringbuffer>>(stream_cls, "Ringbuffer")
        .def("size", &heap_ringbuffer::size)
        .def("capacity", &heap_ringbuffer::capacity);
    stream_cls
        .def(py::init([](py::object thread_pool, const py_stream_config &config, const ring_stream_config &ring_config) {
                 if (thread_pool.is_none())
                     throw py::type_error("thread_pool must not be None");
                 auto pool = thread_pool.cast<std::shared_ptr<spead2::thread_pool>>();
                 std::shared_ptr<heap::memory_allocator> alloc;
                 if (!config.memory_allocator.is_none())
                     alloc = config.memory_allocator.cast<std::shared_ptr<heap::memory_allocator>>();
                 auto self = std::make_unique<py_heap_stream>();
                 self->stream = std::make_unique<heap_stream>(pool, config.cfg, ring_config, alloc);
                 self->thread_pool = thread_pool;
                 self->allocator = config.memory_allocator;
                 heap_stream *raw = self->stream.get();
                 register_stoppable(raw, [raw] { raw->stop(); });
                 return self;
             }),
             py::arg("thread_pool"), py::arg_v("config", py_stream_config(), "StreamConfig()"),
             py::arg_v("ring_config", ring_stream_config(), "RingStreamConfig()"))
        .def_property_readonly("ring_config", [](py_heap_stream &self) { return self.heaps().get_ring_config(); })
        .def_property_readonly("ringbuffer", [](py_heap_stream &self) { return self.heaps().get_ringbuffer(); })
        .def_property_readonly("fd", [](py_heap_stream &self) { return self.heaps().get_ringbuffer()->data_fd(); })
        .def("get", [to_python](py_heap_stream &self) {
            auto ring = self.heaps().get_ringbuffer();
            auto h = interruptible([&] { return ring->pop_for(SIGNAL_POLL_INTERVAL); });
            return to_python(std::move(*h));
        })
        .def("get_nowait", [to_python](py_heap_stream &self) {
            return to_python(self.heaps().get_ringbuffer()->try_pop());
        })
        .def("stop", [](py_heap_stream &self) {
            heap_stream &s = self.heaps();
            py::gil_scoped_release nogil;
            s.stop();
        });
}

} // namespace spead2::bindings
