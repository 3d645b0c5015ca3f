// Python bindings for spead2.recv's configurations: the statistics indices,
// StreamStatConfig, StreamConfig and ChunkStreamConfig.  Every constructor
// argument is declared once, keyword-only, with its default taken from a
// default-constructed C++ config.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "bindings/recv_parts.h"
#include "heap/memory.h"

namespace spead2::bindings
{

namespace
{

using namespace spead2::chunk;

constexpr const char *PLACE_SIGNATURE_PLAIN = "void (void *, size_t)";
constexpr const char *PLACE_SIGNATURE_CONTEXT = "void (void *, size_t, void *)";

place_function parse_place(const py::object &obj)
{
    place_function f;
    if (obj.is_none())
        return f;
    if (!py::isinstance<py::tuple>(obj))
        throw py::type_error("place must be None or a tuple whose first element is a PyCapsule");
    py::tuple t = obj.cast<py::tuple>();
    if (t.size() == 0)
        throw py::index_error("place tuple is empty");
    py::object cap = t[0];
    if (!PyCapsule_CheckExact(cap.ptr()))
        throw py::type_error("the first element of place must be a PyCapsule");
    const char *name = PyCapsule_GetName(cap.ptr());
    if (!name)
    {
        if (PyErr_Occurred())
            throw py::error_already_set();
        throw py::value_error("Signature missing from capsule");
    }
    void *ptr = PyCapsule_GetPointer(cap.ptr(), name);
    if (!ptr)
    {
        PyErr_Clear();
        return f;   // a NULL function pointer is treated as None
    }
    if (std::strcmp(name, PLACE_SIGNATURE_PLAIN) == 0)
        f.type = place_function::kind::plain;
    else if (std::strcmp(name, PLACE_SIGNATURE_CONTEXT) == 0)
        f.type = place_function::kind::with_context;
    else
        throw py::value_error(std::string("Invalid callback signature \"") + name
                              + "\". Expected one of: \"" + PLACE_SIGNATURE_PLAIN + "\", \""
                              + PLACE_SIGNATURE_CONTEXT + "\"");
    f.fn = ptr;
    f.context = PyCapsule_GetContext(cap.ptr());
    if (!f.context && PyErr_Occurred())
        PyErr_Clear();
    return f;
}

/// StreamConfig.memory_allocator: a MemoryAllocator (MemoryPool,
/// MmapAllocator) or None, as the reference.
void set_memory_allocator(py_stream_config &c, py::object v)
{
    if (!v.is_none() && !py::isinstance<heap::memory_allocator>(v))
        throw py::type_error("memory_allocator must be a spead2.MemoryAllocator or None, not "
                             + std::string(py::str(py::type::of(v).attr("__name__"))));
    c.memory_allocator = std::move(v);
}

/// ChunkStreamConfig.place: None or a tuple whose first element is a PyCapsule.
void set_place(py_chunk_stream_config &c, const py::object &v)
{
    place_function f = parse_place(v);
    c.cfg.set_place(f);
    c.place = f ? v : py::none();
}

} // anonymous namespace

void register_recv_configs(py::module_ &recv)
{
    // ---- stream_stat_indices
    py::module_ idx = recv.def_submodule("stream_stat_indices", "Indices of the core statistics");
    idx.attr("HEAPS") = stat_index::heaps;
    idx.attr("INCOMPLETE_HEAPS_EVICTED") = stat_index::incomplete_heaps_evicted;
    idx.attr("INCOMPLETE_HEAPS_FLUSHED") = stat_index::incomplete_heaps_flushed;
    idx.attr("PACKETS") = stat_index::packets;
    idx.attr("BATCHES") = stat_index::batches;
    idx.attr("MAX_BATCH") = stat_index::max_batch;
    idx.attr("SINGLE_PACKET_HEAPS") = stat_index::single_packet_heaps;
    idx.attr("SEARCH_DIST") = stat_index::search_dist;
    idx.attr("WORKER_BLOCKED") = stat_index::worker_blocked;

    // ---- StreamStatConfig
    py::class_<stat_config> ssc(recv, "StreamStatConfig");
    py::enum_<stat_config::mode>(ssc, "Mode")
        .value("COUNTER", stat_config::mode::COUNTER)
        .value("MAXIMUM", stat_config::mode::MAXIMUM);
    ssc.def(py::init<std::string, stat_config::mode>(), py::arg("name"),
            py::arg("mode") = stat_config::mode::COUNTER)
        .def_property_readonly("name", [](const stat_config &s) { return s.name; })
        .def_property_readonly("mode", [](const stat_config &s) { return s.kind; })
        .def("combine", &stat_config::combine, py::arg("a"), py::arg("b"))
        .def("__eq__", [](const stat_config &a, const py::object &b) -> py::object {
            if (!py::isinstance<stat_config>(b))
                return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            return py::bool_(a == b.cast<const stat_config &>());
        })
        .def("__ne__", [](const stat_config &a, const py::object &b) -> py::object {
            if (!py::isinstance<stat_config>(b))
                return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            return py::bool_(a != b.cast<const stat_config &>());
        })
        .def("__hash__", [](const stat_config &s) { return py::hash(py::make_tuple(s.name, int(s.kind))); })
        .def("__repr__", [](const stat_config &s) {
            return "StreamStatConfig(" + py::repr(py::str(s.name)).cast<std::string>()
                   + (s.kind == stat_config::mode::COUNTER ? ", Mode.COUNTER)" : ", Mode.MAXIMUM)");
        });

    // ---- StreamConfig
    const stream_config stream_defaults;
    py::class_<py_stream_config>(recv, "StreamConfig")
        .def(py::init([](std::size_t max_heaps, std::size_t substreams, int bug_compat, int memcpy,
                         py::object memory_allocator, bool stop_on_stop_item, bool allow_unsized_heaps,
                         bool allow_out_of_order, std::uintptr_t stream_id, bool explicit_start) {
                 py_stream_config c;
                 c.cfg.set_max_heaps(max_heaps)
                     .set_substreams(substreams)
                     .set_bug_compat(bug_compat)
                     .set_memcpy(memcpy)
                     .set_stop_on_stop_item(stop_on_stop_item)
                     .set_allow_unsized_heaps(allow_unsized_heaps)
                     .set_allow_out_of_order(allow_out_of_order)
                     .set_stream_id(stream_id)
                     .set_explicit_start(explicit_start);
                 set_memory_allocator(c, std::move(memory_allocator));
                 return c;
             }),
             py::kw_only(),
             py::arg("max_heaps") = stream_defaults.get_max_heaps(),
             py::arg("substreams") = stream_defaults.get_substreams(),
             py::arg("bug_compat") = stream_defaults.get_bug_compat(),
             py::arg("memcpy") = stream_defaults.get_memcpy(),
             py::arg("memory_allocator") = py::none(),
             py::arg("stop_on_stop_item") = stream_defaults.get_stop_on_stop_item(),
             py::arg("allow_unsized_heaps") = stream_defaults.get_allow_unsized_heaps(),
             py::arg("allow_out_of_order") = stream_defaults.get_allow_out_of_order(),
             py::arg("stream_id") = stream_defaults.get_stream_id(),
             py::arg("explicit_start") = stream_defaults.get_explicit_start())
        .def_readonly_static("DEFAULT_MAX_HEAPS", &DEFAULT_MAX_HEAPS)
        .def_property("max_heaps",
            [](const py_stream_config &c) { return c.cfg.get_max_heaps(); },
            [](py_stream_config &c, std::size_t v) { c.cfg.set_max_heaps(v); })
        .def_property("substreams",
            [](const py_stream_config &c) { return c.cfg.get_substreams(); },
            [](py_stream_config &c, std::size_t v) { c.cfg.set_substreams(v); })
        .def_property("bug_compat",
            [](const py_stream_config &c) { return c.cfg.get_bug_compat(); },
            [](py_stream_config &c, int v) { c.cfg.set_bug_compat(v); })
        .def_property("memcpy",
            [](const py_stream_config &c) { return c.cfg.get_memcpy(); },
            [](py_stream_config &c, int v) { c.cfg.set_memcpy(v); })
        .def_property("memory_allocator",
            [](const py_stream_config &c) { return c.memory_allocator; }, &set_memory_allocator)
        .def_property("stop_on_stop_item",
            [](const py_stream_config &c) { return c.cfg.get_stop_on_stop_item(); },
            [](py_stream_config &c, bool v) { c.cfg.set_stop_on_stop_item(v); })
        .def_property("allow_unsized_heaps",
            [](const py_stream_config &c) { return c.cfg.get_allow_unsized_heaps(); },
            [](py_stream_config &c, bool v) { c.cfg.set_allow_unsized_heaps(v); })
        .def_property("allow_out_of_order",
            [](const py_stream_config &c) { return c.cfg.get_allow_out_of_order(); },
            [](py_stream_config &c, bool v) { c.cfg.set_allow_out_of_order(v); })
        .def_property("stream_id",
            [](const py_stream_config &c) { return c.cfg.get_stream_id(); },
            [](py_stream_config &c, std::uintptr_t v) { c.cfg.set_stream_id(v); })
        .def_property("explicit_start",
            [](const py_stream_config &c) { return c.cfg.get_explicit_start(); },
            [](py_stream_config &c, bool v) { c.cfg.set_explicit_start(v); })
        .def_property_readonly("stats", [](const py_stream_config &c) { return c.cfg.get_stats(); })
        .def("add_stat",
            [](py_stream_config &c, const std::string &name, stat_config::mode mode) {
                return c.cfg.add_stat(name, mode);
            },
            py::arg("name"), py::arg("mode") = stat_config::mode::COUNTER)
        .def("get_stat_index",
            [](const py_stream_config &c, const std::string &name) { return c.cfg.get_stat_index(name); },
            py::arg("name"))
        .def("next_stat_index", [](const py_stream_config &c) { return c.cfg.next_stat_index(); })
        .def("__copy__", [](const py_stream_config &c) { return py_stream_config(c); })
        .def("__deepcopy__", [](const py_stream_config &c, py::dict) { return py_stream_config(c); });

    // ---- ChunkStreamConfig
    const chunk_stream_config chunk_defaults;
    py::class_<py_chunk_stream_config>(recv, "ChunkStreamConfig")
        .def(py::init([](std::vector<std::uint64_t> items, std::size_t max_chunks, const py::object &place,
                         std::size_t max_heap_extra) {
                 py_chunk_stream_config c;
                 c.cfg.set_items(std::move(items)).set_max_chunks(max_chunks).set_max_heap_extra(max_heap_extra);
                 set_place(c, place);
                 return c;
             }),
             py::kw_only(),
             py::arg("items") = chunk_defaults.get_items(),
             py::arg("max_chunks") = chunk_defaults.get_max_chunks(),
             py::arg("place") = py::none(),
             py::arg("max_heap_extra") = chunk_defaults.get_max_heap_extra())
        .def_readonly_static("DEFAULT_MAX_CHUNKS", &DEFAULT_MAX_CHUNKS)
        .def_property("items",
            [](const py_chunk_stream_config &c) { return c.cfg.get_items(); },
            [](py_chunk_stream_config &c, std::vector<std::uint64_t> v) { c.cfg.set_items(std::move(v)); })
        .def_property("max_chunks",
            [](const py_chunk_stream_config &c) { return c.cfg.get_max_chunks(); },
            [](py_chunk_stream_config &c, std::size_t v) { c.cfg.set_max_chunks(v); })
        .def_property("place", [](const py_chunk_stream_config &c) { return c.place; }, &set_place)
        .def_property("max_heap_extra",
            [](const py_chunk_stream_config &c) { return c.cfg.get_max_heap_extra(); },
            [](py_chunk_stream_config &c, std::size_t v) { c.cfg.set_max_heap_extra(v); })
        .def_property_readonly("packet_presence_payload_size",
            [](const py_chunk_stream_config &c) { return c.cfg.get_packet_presence_payload_size(); })
        .def("enable_packet_presence",
            [](py_chunk_stream_config &c, std::size_t payload_size) -> py_chunk_stream_config & {
                c.cfg.enable_packet_presence(payload_size);
                return c;
            },
            py::arg("payload_size"), py::return_value_policy::reference_internal)
        .def("disable_packet_presence",
            [](py_chunk_stream_config &c) -> py_chunk_stream_config & {
                c.cfg.disable_packet_presence();
                return c;
            },
            py::return_value_policy::reference_internal);
}

} // namespace spead2::bindings
