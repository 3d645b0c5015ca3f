// Python bindings for spead2.recv: configs, chunks, ringbuffers, streams.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cerrno>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>
#include <cstring>

#include "bindings/module.h"
#include "bindings/py_chunk.h"
#include "bindings/py_stream.h"
#include "chunk/ring_stream.h"
#include "heap/memory.h"
#include "transport/mem/mem_reader.h"
#include "transport/pcap/pcap_reader.h"
#include "transport/tcp/tcp_reader.h"
#include "transport/udp/udp_reader.h"
#include "transport/ibv/ibv_probe.h"
#include "transport/ibv/ibv_reader.h"

namespace spead2::bindings
{

namespace
{

using namespace spead2::chunk;

constexpr const char *PLACE_SIGNATURE_PLAIN = "void (void *, size_t)";
constexpr const char *PLACE_SIGNATURE_CONTEXT = "void (void *, size_t, void *)";

// -------------------------------------------------------- ChunkStreamConfig

struct py_chunk_stream_config
{
    chunk_stream_config cfg;
    py::object place = py::none();
};

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

// -------------------------------------------------------- ChunkRingbuffer
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

// ------------------------------------------------------------ ChunkRingPair

struct py_ring_pair
{
    py::object data_ringbuffer;
    py::object free_ringbuffer;
    std::shared_ptr<chunk_ringbuffer> free_ring;

    void add_free_chunk(py::handle obj)
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
};

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

struct py_ring_group;

/// A member of a ChunkStreamRingGroup; owned by the group (never by Python).
struct py_group_member : public py_stream
{
    chunk_group_member *member = nullptr;
    transport::stream_control &get() override
    {
        if (!member)
            throw std::runtime_error("stream has been destroyed");
        return *member;
    }
};

struct py_ring_group : public py_ring_pair
{
    std::unique_ptr<chunk_ring_group> group;
    std::vector<std::unique_ptr<py_group_member>> members;

    py_ring_group() = default;
    py_ring_group(const py_ring_group &) = delete;
    ~py_ring_group()
    {
        if (group)
        {
            unregister_stoppable(group.get());
            group.reset();   // stops and destroys the members before their buffers go
        }
        members.clear();
    }

    chunk_ring_group &get()
    {
        if (!group)
            throw std::runtime_error("group has been destroyed");
        return *group;
    }
};

template<typename Factory>
bool add_reader(py_stream &self, Factory &&factory)
{
    transport::stream_control &s = self.get();
    py::gil_scoped_release nogil;
    return s.add_reader(factory);
}

bool add_ibv(py_stream &self, const transport::ibv_config &config)
{
    // A build without the verbs headers says so before anything else: no
    // configuration would help.
    if (!transport::ibv_compiled())
        throw std::runtime_error(transport::IBV_NOT_BUILT_MESSAGE);
    config.validate();
    std::string kind;
    std::shared_ptr<const transport::ibv_reader_stats> stats;
    bool added = add_reader(self, [&](transport::packet_sink &sink, worker &w) {
        auto r = transport::make_ibv_reader(sink, w, config);
        kind = transport::ibv_reader_kind(*r);
        stats = transport::ibv_reader_statistics(*r);
        return r;
    });
    if (added)
    {
        self.ibv_kinds.push_back(kind);
        self.ibv_stats.push_back(stats);
    }
    return added;
}

bool add_udp(py_stream &self, const transport::udp_socket_spec &spec, std::size_t max_size)
{
    // SPEAD2_IBV_INTERFACE turns IPv4 UDP readers into ibverbs readers (in a
    // build without ibverbs, into the error that says so).
    if (spec.type == transport::udp_socket_spec::kind::unicast
        || spec.type == transport::udp_socket_spec::kind::multicast_v4)
    {
        auto ibv = transport::ibv_override(spec.host, spec.port, max_size, spec.buffer_size,
                                           spec.interface_address);
        if (ibv)
            return add_ibv(self, *ibv);
    }
    return add_reader(self, [&](transport::packet_sink &sink, worker &w) {
        return std::make_shared<transport::udp_reader>(sink, w, spec, max_size);
    });
}

/// spead2._spead2.recv._ibv_compiled and _ibv_probe: what spead2_ibv_check reports.
void register_ibv_probe(py::module_ &recv)
{
    recv.attr("_ibv_compiled") = transport::ibv_compiled();
    recv.def("_ibv_probe", [](const std::string &interface_address) {
        transport::ibv_probe_result r;
        {
            py::gil_scoped_release nogil;
            r = transport::ibv_probe(interface_address);
        }
        py::dict out;
        out["verbs_error"] = r.verbs_error;
        out["rdmacm_error"] = r.rdmacm_error;
        out["mlx5_error"] = r.mlx5_error;
        out["library_override"] = r.library_override;
        py::list devices;
        for (const auto &d : r.devices)
        {
            py::dict dev;
            dev["name"] = d.name;
            dev["error"] = d.error;
            dev["fw_ver"] = d.fw_ver;
            dev["flow_steering"] = d.flow_steering;
            dev["max_qp_wr"] = d.max_qp_wr;
            dev["max_cqe"] = d.max_cqe;
            dev["max_mr_size"] = d.max_mr_size;
            dev["num_comp_vectors"] = d.num_comp_vectors;
            py::list ports;
            for (const auto &p : d.ports)
            {
                py::dict port;
                port["port"] = p.port;
                port["state"] = p.state;
                port["link_layer"] = p.link_layer;
                port["active_mtu"] = p.active_mtu;
                ports.append(port);
            }
            dev["ports"] = ports;
            dev["mlx5"] = d.mlx5;
            dev["striding_rq"] = d.striding_rq;
            dev["striding_rq_raw_packet"] = d.striding_rq_raw_packet;
            dev["stride_log_bytes"] = py::make_tuple(d.min_stride_log, d.max_stride_log);
            dev["wqe_log_strides"] = py::make_tuple(d.min_strides_log, d.max_strides_log);
            dev["mprq_note"] = d.mprq_note;
            devices.append(dev);
        }
        out["devices"] = devices;
        out["interface_address"] = r.interface_address;
        out["interface_device"] = r.interface_device;
        out["interface_port"] = r.interface_port;
        out["interface_error"] = r.interface_error;
        return out;
    }, py::arg("interface_address") = "");
}

/// The methods every stream class has (the reference's _Stream base).
void register_stream_base(py::module_ &recv)
{
    py::class_<py_stream> cls(recv, "_Stream");
    cls.def_readonly_static("DEFAULT_UDP_MAX_SIZE", &transport::DEFAULT_UDP_MAX_SIZE)
        .def_readonly_static("DEFAULT_UDP_BUFFER_SIZE", &transport::DEFAULT_UDP_BUFFER_SIZE)
        .def_readonly_static("DEFAULT_TCP_MAX_SIZE", &transport::DEFAULT_TCP_MAX_SIZE)
        .def_readonly_static("DEFAULT_TCP_BUFFER_SIZE", &transport::DEFAULT_TCP_BUFFER_SIZE)
        .def_property_readonly("config", [](py_stream &self) {
            py_stream_config c;
            c.cfg = self.get().get_config();
            return c;
        })
        .def("_stats_values", [](py_stream &self) { return self.get().get_stats(); })
        .def("start", [](py_stream &self) {
            transport::stream_control &s = self.get();
            py::gil_scoped_release nogil;
            s.start();
        })
        // Stopping a group member stops its whole group (as in the reference).
        // The GIL stays held: stopping frees chunks that own Python buffers.
        .def("stop", [](py_stream &self) { self.get().stop(); })
        .def("add_buffer_reader", [](py_stream &self, py::buffer buffer) {
            auto info = std::make_unique<py::buffer_info>(buffer.request());
            if (!PyBuffer_IsContiguous(info->view(), 'C'))
                throw py::value_error("buffer must be C-contiguous");
            const auto *ptr = static_cast<const std::uint8_t *>(info->ptr);
            const std::size_t size = std::size_t(info->size * info->itemsize);
            self.buffers.push_back(std::move(info));
            add_reader(self, [ptr, size](transport::packet_sink &sink, worker &w) {
                return std::make_shared<transport::buffer_reader>(sink, w, ptr, size);
            });
        }, py::arg("buffer"))
        .def("add_inproc_reader", [](py_stream &self, std::shared_ptr<transport::inproc_queue> queue) {
            add_reader(self, [queue](transport::packet_sink &sink, worker &w) {
                return std::make_shared<transport::inproc_reader>(sink, w, queue);
            });
        }, py::arg("queue"))
        .def("add_udp_pcap_file_reader", [](py_stream &self, const std::string &filename,
                                             const std::string &filter) {
            add_reader(self, [&](transport::packet_sink &sink, worker &w) {
                return std::make_shared<transport::pcap_reader>(sink, w, filename, filter);
            });
        }, py::arg("filename"), py::arg("filter") = "")
        // add_udp_reader: the reference's overloads, tried in this order.
        .def("add_udp_reader", [](py_stream &self, std::uint16_t port, std::size_t max_size,
                                  std::size_t buffer_size, const std::string &bind_hostname) {
            transport::udp_socket_spec spec;
            spec.host = bind_hostname;
            spec.port = port;
            spec.buffer_size = buffer_size;
            add_udp(self, spec, max_size);
        }, py::arg("port"), py::arg("max_size") = transport::DEFAULT_UDP_MAX_SIZE,
           py::arg("buffer_size") = transport::DEFAULT_UDP_BUFFER_SIZE, py::arg("bind_hostname") = "")
        .def("add_udp_reader", [](py_stream &self, const std::string &multicast_group,
                                  std::uint16_t port, std::size_t max_size, std::size_t buffer_size,
                                  const std::string &interface_address) {
            transport::udp_socket_spec spec;
            spec.type = transport::udp_socket_spec::kind::multicast_v4;
            spec.host = multicast_group;
            spec.port = port;
            spec.buffer_size = buffer_size;
            spec.interface_address = interface_address;
            add_udp(self, spec, max_size);
        }, py::arg("multicast_group"), py::arg("port"), py::arg("max_size") = transport::DEFAULT_UDP_MAX_SIZE,
           py::arg("buffer_size") = transport::DEFAULT_UDP_BUFFER_SIZE, py::arg("interface_address") = "0.0.0.0")
        .def("add_udp_reader", [](py_stream &self, const std::string &multicast_group,
                                  std::uint16_t port, std::size_t max_size, std::size_t buffer_size,
                                  unsigned interface_index) {
            transport::udp_socket_spec spec;
            spec.type = transport::udp_socket_spec::kind::multicast_v6;
            spec.host = multicast_group;
            spec.port = port;
            spec.buffer_size = buffer_size;
            spec.interface_index = interface_index;
            add_udp(self, spec, max_size);
        }, py::arg("multicast_group"), py::arg("port"), py::arg("max_size") = transport::DEFAULT_UDP_MAX_SIZE,
           py::arg("buffer_size") = transport::DEFAULT_UDP_BUFFER_SIZE, py::arg("interface_index"))
        .def("add_udp_reader", [](py_stream &self, py::object socket, std::size_t max_size) {
            if (!py::hasattr(socket, "fileno"))
                throw py::type_error("socket must be a socket.socket (or have fileno())");
            int fd = socket.attr("fileno")().cast<int>();
            int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
            if (dup_fd < 0)
                throw std::system_error(errno, std::generic_category(), "duplicating the socket");
            transport::udp_socket_spec spec;
            spec.type = transport::udp_socket_spec::kind::adopt;
            spec.fd = dup_fd;
            // The reader owns the duplicate (and closes it if construction fails);
            // if the stream has already stopped no reader is made.
            if (!add_udp(self, spec, max_size))
                ::close(dup_fd);
        }, py::arg("socket"), py::arg("max_size") = transport::DEFAULT_UDP_MAX_SIZE)
        // add_tcp_reader: a port to listen on, or a listening socket.
        .def("add_tcp_reader", [](py_stream &self, std::uint16_t port, std::size_t max_size,
                                  std::size_t buffer_size, const std::string &bind_hostname) {
            int fd;
            {
                py::gil_scoped_release nogil;
                fd = transport::open_tcp_acceptor(bind_hostname, port, buffer_size);
            }
            if (!add_reader(self, [fd, max_size](transport::packet_sink &sink, worker &w) {
                    return std::make_shared<transport::tcp_reader>(sink, w, fd, max_size);
                }))
                ::close(fd);
        }, py::arg("port"), py::arg("max_size") = transport::DEFAULT_TCP_MAX_SIZE,
           py::arg("buffer_size") = transport::DEFAULT_TCP_BUFFER_SIZE, py::arg("bind_hostname") = "")
        .def("add_tcp_reader", [](py_stream &self, py::object acceptor, std::size_t max_size) {
            if (!py::hasattr(acceptor, "fileno"))
                throw py::type_error("acceptor must be a socket.socket (or have fileno())");
            int dup_fd = ::fcntl(acceptor.attr("fileno")().cast<int>(), F_DUPFD_CLOEXEC, 0);
            if (dup_fd < 0)
                throw std::system_error(errno, std::generic_category(), "duplicating the socket");
            // The reader owns the duplicate (and closes it if construction fails).
            if (!add_reader(self, [dup_fd, max_size](transport::packet_sink &sink, worker &w) {
                    return std::make_shared<transport::tcp_reader>(sink, w, dup_fd, max_size);
                }))
                ::close(dup_fd);
        }, py::arg("acceptor"), py::arg("max_size") = transport::DEFAULT_TCP_MAX_SIZE)
        .def("_ibv_reader_kinds", [](const py_stream &self) { return self.ibv_kinds; })
        .def("_ibv_reader_stats", [](const py_stream &self) {
            // Diagnostics of each ibverbs reader: error completions, queue
            // recoveries, and why it stopped the stream (if it did).
            py::list out;
            for (const auto &st : self.ibv_stats)
            {
                py::dict d;
                d["error_completions"] = st->error_completions.load();
                d["recoveries"] = st->recoveries.load();
                d["async_events"] = st->async_events.load();
                d["failed"] = st->failed.load();
                std::lock_guard<std::mutex> lock(st->mutex);
                d["error"] = st->error;
                out.append(d);
            }
            return out;
        });
    cls.def("add_udp_ibv_reader", [](py_stream &self, const transport::ibv_config &config) {
        add_ibv(self, config);
    }, py::arg("config"));
}

/// A member of a group as a Python object: the same object for the same
/// member while it is alive, keeping the group alive.
py::object member_object(py_ring_group &self, py::handle self_obj, std::size_t index)
{
    return py::cast(self.members[index].get(), py::return_value_policy::reference_internal, self_obj);
}

} // anonymous namespace

void register_recv(py::module_ &m)
{
    py::module_ recv = m.def_submodule("recv", "Receiving (compiled part)");

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
    py::class_<py_stream_config>(recv, "StreamConfig")
        .def(py::init([](py::kwargs kwargs) {
            auto c = std::make_unique<py_stream_config>();
            py::object self = py::cast(c.get(), py::return_value_policy::reference);
            for (auto item : kwargs)
            {
                std::string key = item.first.cast<std::string>();
                static const char *const fields[] = {
                    "max_heaps", "substreams", "bug_compat", "memcpy", "memory_allocator", "stop_on_stop_item",
                    "allow_unsized_heaps", "allow_out_of_order", "stream_id", "explicit_start"};
                if (std::find(std::begin(fields), std::end(fields), key) == std::end(fields))
                    throw py::type_error("StreamConfig() got an unexpected keyword argument '" + key + "'");
                py::setattr(self, key.c_str(), item.second);
            }
            return c;
        }))
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
            [](const py_stream_config &c) { return c.memory_allocator; },
            [](py_stream_config &c, py::object v) {
                // A MemoryAllocator (MemoryPool, MmapAllocator) or None, as the reference.
                if (!v.is_none() && !py::isinstance<heap::memory_allocator>(v))
                    throw py::type_error("memory_allocator must be a spead2.MemoryAllocator or None, not "
                                         + std::string(py::str(py::type::of(v).attr("__name__"))));
                c.memory_allocator = std::move(v);
            })
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
    py::class_<py_chunk_stream_config>(recv, "ChunkStreamConfig")
        .def(py::init([](py::kwargs kwargs) {
            auto c = std::make_unique<py_chunk_stream_config>();
            py::object self = py::cast(c.get(), py::return_value_policy::reference);
            for (auto item : kwargs)
            {
                std::string key = item.first.cast<std::string>();
                if (key != "items" && key != "max_chunks" && key != "place" && key != "max_heap_extra")
                    throw py::type_error("ChunkStreamConfig() got an unexpected keyword argument '" + key + "'");
                py::setattr(self, key.c_str(), item.second);
            }
            return c;
        }))
        .def_readonly_static("DEFAULT_MAX_CHUNKS", &DEFAULT_MAX_CHUNKS)
        .def_property("items",
            [](const py_chunk_stream_config &c) { return c.cfg.get_items(); },
            [](py_chunk_stream_config &c, std::vector<std::uint64_t> v) { c.cfg.set_items(std::move(v)); })
        .def_property("max_chunks",
            [](const py_chunk_stream_config &c) { return c.cfg.get_max_chunks(); },
            [](py_chunk_stream_config &c, std::size_t v) { c.cfg.set_max_chunks(v); })
        .def_property("place",
            [](const py_chunk_stream_config &c) { return c.place; },
            [](py_chunk_stream_config &c, py::object v) {
                place_function f = parse_place(v);
                c.cfg.set_place(f);
                c.place = f ? v : py::none();
            })
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

    // ---- Chunk
    py::class_<chunk_object>(recv, "Chunk")
        .def(py::init([](py::kwargs kwargs) {
            auto c = std::make_unique<chunk_object>();
            for (auto item : kwargs)
            {
                std::string key = item.first.cast<std::string>();
                py::object value = py::reinterpret_borrow<py::object>(item.second);
                if (key == "chunk_id")
                    c->chunk_id = value.cast<std::int64_t>();
                else if (key == "stream_id")
                    c->stream_id = value.cast<std::uintptr_t>();
                else if (key == "data" || key == "present" || key == "extra")
                {
                    check_chunk_buffer(value);
                    (key == "data" ? c->data : key == "present" ? c->present : c->extra) = value;
                }
                else
                    throw py::type_error("Chunk() got an unexpected keyword argument '" + key + "'");
            }
            return c;
        }))
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
        .def(py::init<std::size_t>(), py::arg("maxsize"))
        .def_property_readonly("maxsize", &chunk_ringbuffer::capacity)
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

    register_stream_base(recv);
    register_heap_stream(recv);
    register_place(recv);

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
             py::arg("thread_pool"), py::arg("config") = py_stream_config(),
             py::arg("chunk_stream_config"), py::arg("data_ringbuffer"), py::arg("free_ringbuffer"));

    // ---- Chunk stream groups
    py::class_<chunk_group_config> group_cfg(recv, "ChunkStreamGroupConfig");
    py::enum_<eviction_mode>(group_cfg, "EvictionMode")
        .value("LOSSY", eviction_mode::LOSSY)
        .value("LOSSLESS", eviction_mode::LOSSLESS);
    group_cfg
        .def(py::init([](std::size_t max_chunks, eviction_mode mode) {
                 chunk_group_config c;
                 c.set_max_chunks(max_chunks);
                 c.set_eviction_mode(mode);
                 return c;
             }),
             py::kw_only(), py::arg("max_chunks") = DEFAULT_MAX_CHUNKS,
             py::arg("eviction_mode") = eviction_mode::LOSSY)
        .def_readonly_static("DEFAULT_MAX_CHUNKS", &DEFAULT_MAX_CHUNKS)
        .def_property("max_chunks", &chunk_group_config::get_max_chunks,
                      [](chunk_group_config &c, std::size_t v) { c.set_max_chunks(v); })
        .def_property("eviction_mode", &chunk_group_config::get_eviction_mode,
                      [](chunk_group_config &c, eviction_mode m) { c.set_eviction_mode(m); })
        .def("__copy__", [](const chunk_group_config &c) { return chunk_group_config(c); })
        .def("__deepcopy__", [](const chunk_group_config &c, py::dict) { return chunk_group_config(c); });

    py::class_<py_group_member, py_stream, std::unique_ptr<py_group_member, py::nodelete>>(
        recv, "ChunkStreamGroupMember");

    py::class_<py_ring_group, py_ring_pair>(recv, "ChunkStreamRingGroup")
        .def(py::init([](const chunk_group_config &config, py::object data_ringbuffer,
                         py::object free_ringbuffer) {
                 if (data_ringbuffer.is_none() || free_ringbuffer.is_none())
                     throw py::type_error("ringbuffers must not be None");
                 auto data = data_ringbuffer.cast<std::shared_ptr<chunk_ringbuffer>>();
                 auto free = free_ringbuffer.cast<std::shared_ptr<chunk_ringbuffer>>();
                 auto self = std::make_unique<py_ring_group>();
                 self->group = std::make_unique<chunk_ring_group>(config, data, free);
                 self->data_ringbuffer = data_ringbuffer;
                 self->free_ringbuffer = free_ringbuffer;
                 self->free_ring = free;
                 chunk_ring_group *raw = self->group.get();
                 register_stoppable(raw, [raw] { raw->stop(); });
                 return self;
             }),
             py::arg("config"), py::arg("data_ringbuffer"), py::arg("free_ringbuffer"))
        .def_property_readonly("config", [](py_ring_group &self) { return self.get().get_config(); })
        .def("emplace_back", [](py::object self_obj, py::object thread_pool, const py_stream_config &config,
                                const py_chunk_stream_config &chunk_stream_config) {
                 py_ring_group &self = self_obj.cast<py_ring_group &>();
                 if (thread_pool.is_none())
                     throw py::type_error("thread_pool must not be None");
                 auto pool = thread_pool.cast<std::shared_ptr<spead2::thread_pool>>();
                 auto wrapper = std::make_unique<py_group_member>();
                 wrapper->place = chunk_stream_config.place;
                 wrapper->thread_pool = thread_pool;
                 wrapper->member = &self.get().emplace_back(pool, config.cfg, chunk_stream_config.cfg);
                 self.members.push_back(std::move(wrapper));
                 return member_object(self, self_obj, self.members.size() - 1);
             },
             py::arg("thread_pool"), py::arg("config") = py_stream_config(), py::arg("chunk_stream_config"))
        .def_property_readonly("health", [](py_ring_group &self) {
                 auto h = self.get().get_health();
                 py::dict d;
                 d["head"] = h.head;
                 d["chunks_in_window"] = h.chunks_in_window;
                 d["lossy_flushes"] = h.lossy_flushes;
                 d["member_waits"] = h.member_waits;
                 return d;
             }, "The group window: oldest chunk ID, chunks under construction, LOSSY flush rounds, "
                "times a member waited for the others")
        .def("__len__", [](const py_ring_group &self) { return self.members.size(); })
        .def("__getitem__", [](py::object self_obj, std::int64_t index) {
                 py_ring_group &self = self_obj.cast<py_ring_group &>();
                 const auto n = std::int64_t(self.members.size());
                 if (index < 0)
                     index += n;
                 if (index < 0 || index >= n)
                     throw py::index_error("group index out of range");
                 return member_object(self, self_obj, std::size_t(index));
             }, py::arg("index"))
        .def("__getitem__", [](py::object self_obj, py::slice slice) {
                 py_ring_group &self = self_obj.cast<py_ring_group &>();
                 std::size_t start, stop, step, length;
                 if (!slice.compute(self.members.size(), &start, &stop, &step, &length))
                     throw py::error_already_set();
                 py::list out;
                 for (std::size_t i = 0; i < length; i++)
                     out.append(member_object(self, self_obj, start + i * step));
                 return out;
             }, py::arg("index"))
        .def("stop", [](py_ring_group &self) {
            if (self.group)
                self.group->stop();
        });

    py::class_<transport::ibv_config>(recv, "UdpIbvConfig")
        .def(py::init([](py::kwargs kwargs) {
            auto c = std::make_unique<transport::ibv_config>();
            py::object self = py::cast(c.get(), py::return_value_policy::reference);
            for (auto item : kwargs)
            {
                std::string key = item.first.cast<std::string>();
                if (key != "endpoints" && key != "interface_address" && key != "buffer_size"
                    && key != "max_size" && key != "comp_vector" && key != "max_poll")
                    throw py::type_error("UdpIbvConfig() got an unexpected keyword argument '" + key + "'");
                py::setattr(self, key.c_str(), item.second);
            }
            return c;
        }))
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &transport::IBV_DEFAULT_BUFFER_SIZE)
        .def_readonly_static("DEFAULT_MAX_SIZE", &transport::IBV_DEFAULT_MAX_SIZE)
        .def_readonly_static("DEFAULT_MAX_POLL", &transport::IBV_DEFAULT_MAX_POLL)
        .def_property("endpoints",
            [](const transport::ibv_config &c) { return c.endpoints; },
            [](transport::ibv_config &c, std::vector<std::pair<std::string, std::uint16_t>> v) {
                c.endpoints = std::move(v);
            })
        .def_readwrite("interface_address", &transport::ibv_config::interface_address)
        .def_property("buffer_size",
            [](const transport::ibv_config &c) { return c.buffer_size; },
            [](transport::ibv_config &c, std::size_t v) {
                c.buffer_size = v ? v : transport::IBV_DEFAULT_BUFFER_SIZE;
            })
        .def_property("max_size",
            [](const transport::ibv_config &c) { return c.max_size; },
            [](transport::ibv_config &c, std::size_t v) {
                if (v < 1)
                    throw py::value_error("max_size must be positive");
                c.max_size = v;
            })
        .def_readwrite("comp_vector", &transport::ibv_config::comp_vector)
        .def_property("max_poll",
            [](const transport::ibv_config &c) { return c.max_poll; },
            [](transport::ibv_config &c, int v) {
                if (v < 1)
                    throw py::value_error("max_poll must be at least 1");
                c.max_poll = v;
            });
    register_ibv_probe(recv);
}

} // namespace spead2::bindings
