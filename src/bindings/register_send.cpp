// Python bindings for the compiled part of spead2.send.
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pybind11/native_enum.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <system_error>

#include "bindings/module.h"
#include "common/thread_pool.h"
#include "send/heap.h"
#include "send/stream.h"
#include "transport/mem/mem_reader.h"

namespace spead2::bindings
{

/// A socket.socket of the given type (SOCK_DGRAM, SOCK_STREAM), open; any
/// other object does not match the overload (TypeError, as the reference).
template <int Type>
struct typed_socket
{
    int fd = -1;   ///< the Python object's descriptor (not owned)
};

} // namespace spead2::bindings

namespace pybind11::detail
{

template <int Type>
struct type_caster<spead2::bindings::typed_socket<Type>>
{
    PYBIND11_TYPE_CASTER(spead2::bindings::typed_socket<Type>, const_name("socket.socket"));

    bool load(handle src, bool)
    {
        object socket_cls = module_::import("socket").attr("socket");
        if (!isinstance(src, socket_cls))
            return false;
        int fd = src.attr("fileno")().cast<int>();
        if (fd < 0 || src.attr("type").cast<int>() != Type)
            return false;
        value.fd = fd;
        return true;
    }

    static handle cast(const spead2::bindings::typed_socket<Type> &, return_value_policy, handle)
    {
        return none().release();
    }
};

} // namespace pybind11::detail

namespace spead2::bindings
{

namespace
{

using namespace spead2::send;

/// A duplicate of the socket's descriptor (the stream owns it; the caller
/// may close the original straight away, as with the reference).
template <int Type>
int dup_socket(const typed_socket<Type> &sock)
{
    int fd = ::fcntl(sock.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        throw std::system_error(errno, std::generic_category(), "duplicating the socket");
    return fd;
}

using endpoint_list = std::vector<std::pair<std::string, std::uint16_t>>;

std::vector<socket_endpoint> resolve_socket_endpoints(const endpoint_list &endpoints)
{
    std::vector<socket_endpoint> out;
    for (const auto &[host, port] : endpoints)
        out.push_back(resolve_endpoint(host, port));
    return out;
}

std::unique_ptr<udp_stream> make_udp(const stream_config &config, const endpoint_list &endpoints,
                                     udp_socket_options options)
{
    auto eps = resolve_socket_endpoints(endpoints);
    py::gil_scoped_release nogil;
    return std::make_unique<udp_stream>(config, std::move(eps), options);
}

using namespace spead2::send;

/// A heap plus the Python buffers its addressed items point into.
struct py_heap
{
    heap h;
    std::vector<std::unique_ptr<py::buffer_info>> buffers;
    explicit py_heap(int heap_address_bits) : h(heap_address_bits) {}
};

std::vector<udp_endpoint> resolve_endpoints(const std::vector<std::pair<std::string, int>> &endpoints)
{
    std::vector<udp_endpoint> out;
    for (const auto &[host, port] : endpoints)
    {
        if (port < 0 || port > 65535)
            throw std::invalid_argument("port " + std::to_string(port) + " is out of range");
        out.push_back(resolve_ipv4(host, std::uint16_t(port)));
    }
    return out;
}

/// The compiled heap of @a obj: a _Heap, or a spead2.send.Heap (which keeps one in ``_heap``).
py_heap &heap_of(const py::object &obj)
{
    if (py::isinstance<py_heap>(obj))
        return obj.cast<py_heap &>();
    if (py::hasattr(obj, "_heap"))
    {
        py::object inner = obj.attr("_heap");
        if (py::isinstance<py_heap>(inner))
            return inner.cast<py_heap &>();
    }
    throw py::type_error("heap must be a spead2.send.Heap, not " + std::string(py::str(py::type::of(obj).attr("__name__"))));
}

/// spead2.send.HeapReference: a heap and how to send it.
struct py_heap_reference
{
    py::object heap;          ///< the Python object given (returned by .heap)
    py_heap *compiled;
    std::int64_t cnt;
    std::size_t substream_index;
    double rate;
    py_heap_reference(py::object heap, std::int64_t cnt, std::size_t substream_index, double rate)
        : heap(heap), compiled(&heap_of(heap)), cnt(cnt), substream_index(substream_index), rate(rate)
    {
    }
    heap_reference get() const
    {
        heap_reference r;
        r.h = &compiled->h;
        r.cnt = cnt;
        r.substream_index = substream_index;
        r.rate = rate;
        return r;
    }
};

/// spead2.send.HeapReferenceList: references converted once, so that a
/// list can be sent again and again without touching Python objects.
struct py_heap_reference_list
{
    std::vector<heap_reference> refs;
    std::vector<py::object> keepalive;   ///< the heaps, parallel to refs
    py_heap_reference_list() = default;
    explicit py_heap_reference_list(const std::vector<const py_heap_reference *> &items)
    {
        for (const auto *item : items)
        {
            refs.push_back(item->get());
            keepalive.push_back(item->heap);
        }
    }
};

std::vector<heap_reference> to_refs(const std::vector<const py_heap_reference *> &items)
{
    std::vector<heap_reference> out;
    out.reserve(items.size());
    for (const auto *item : items)
        out.push_back(item->get());
    return out;
}

void add_stream_methods(py::class_<stream> &cls)
{
    cls.def("send_heap", [](stream &s, py::object heap, std::int64_t cnt, std::size_t substream_index, double rate) {
               const spead2::send::heap &h = heap_of(heap).h;
               return without_gil([&] { return s.send_heap(h, cnt, substream_index, rate); });
           }, py::arg("heap"), py::arg("cnt") = -1, py::arg("substream_index") = 0, py::arg("rate") = -1.0)
        .def("send_heaps", [](stream &s, const py_heap_reference_list &heaps, group_mode mode) {
               return without_gil([&] { return s.send_heaps(heaps.refs.data(), heaps.refs.size(), mode); });
           }, py::arg("heaps"), py::arg("mode"))
        .def("send_heaps", [](stream &s, const std::vector<const py_heap_reference *> &heaps, group_mode mode) {
               auto refs = to_refs(heaps);
               return without_gil([&] { return s.send_heaps(refs.data(), refs.size(), mode); });
           }, py::arg("heaps"), py::arg("mode"))
        // For spead2.send.asyncio: reserve room in the queue when a send is
        // requested, send (and release) later on the stream's worker thread.
        .def("_reserve", &stream::reserve, py::arg("n"))
        .def("_send_reserved", [](stream &s, const py_heap_reference_list &heaps, group_mode mode) {
               return without_gil([&] { return s.send_heaps(heaps.refs.data(), heaps.refs.size(), mode, true); });
           }, py::arg("heaps"), py::arg("mode"));
}

} // anonymous namespace

void register_send(py::module_ &m)
{
    py::module_ send = m.def_submodule("send", "Sending (compiled part)");

    py::class_<py_heap>(send, "_Heap")
        .def(py::init<int>(), py::arg("heap_address_bits") = 40)
        .def("add_immediate", [](py_heap &self, std::uint64_t id, std::uint64_t value) {
            self.h.add_immediate(id, value);
        }, py::arg("id"), py::arg("value"))
        .def("add_item_bytes", [](py_heap &self, std::uint64_t id, py::buffer data) {
            auto info = std::make_unique<py::buffer_info>(data.request());
            if (!PyBuffer_IsContiguous(info->view(), 'C'))
                throw py::value_error("item data must be a C-contiguous buffer");
            self.h.add_item(id, static_cast<const std::uint8_t *>(info->ptr),
                            std::size_t(info->size * info->itemsize));
            self.buffers.push_back(std::move(info));
        }, py::arg("id"), py::arg("data"))
        .def_property("repeat_pointers",
            [](const py_heap &self) { return self.h.get_repeat_pointers(); },
            [](py_heap &self, bool v) { self.h.set_repeat_pointers(v); })
        .def_property_readonly("_n_items", [](const py_heap &self) { return self.h.get_items().size(); });

    py::register_exception_translator([](std::exception_ptr p) {
        try
        {
            if (p)
                std::rethrow_exception(p);
        }
        catch (const send_error &e)
        {
            // OSError(errno, message), as the reference raises
            py::object exc = py::reinterpret_borrow<py::object>(PyExc_OSError)(e.code().value(), e.what());
            PyErr_SetObject(PyExc_OSError, exc.ptr());
        }
    });

    py::native_enum<rate_method>(send, "RateMethod", "enum.Enum")
        .value("SW", rate_method::sw)
        .value("HW", rate_method::hw)
        .value("AUTO", rate_method::automatic)
        .finalize();
    py::native_enum<group_mode>(send, "GroupMode", "enum.Enum")
        .value("ROUND_ROBIN", group_mode::round_robin)
        .value("SERIAL", group_mode::serial)
        .finalize();

    py::class_<stream_config>(send, "StreamConfig")
        .def(py::init([](std::size_t max_packet_size, double rate, std::size_t burst_size,
                         std::size_t max_heaps, double burst_rate_ratio, rate_method method) {
                 stream_config c;
                 c.set_max_packet_size(max_packet_size).set_rate(rate).set_burst_size(burst_size)
                     .set_max_heaps(max_heaps).set_burst_rate_ratio(burst_rate_ratio).set_rate_method(method);
                 return c;
             }),
             py::kw_only(), py::arg("max_packet_size") = DEFAULT_MAX_PACKET_SIZE, py::arg("rate") = 0.0,
             py::arg("burst_size") = DEFAULT_BURST_SIZE, py::arg("max_heaps") = DEFAULT_MAX_HEAPS,
             py::arg("burst_rate_ratio") = DEFAULT_BURST_RATE_RATIO,
             py::arg("rate_method") = DEFAULT_RATE_METHOD)
        .def_readonly_static("DEFAULT_MAX_PACKET_SIZE", &DEFAULT_MAX_PACKET_SIZE)
        .def_readonly_static("DEFAULT_MAX_HEAPS", &DEFAULT_MAX_HEAPS)
        .def_readonly_static("DEFAULT_BURST_SIZE", &DEFAULT_BURST_SIZE)
        .def_readonly_static("DEFAULT_BURST_RATE_RATIO", &DEFAULT_BURST_RATE_RATIO)
        .def_readonly_static("DEFAULT_RATE_METHOD", &DEFAULT_RATE_METHOD)
        .def_property("max_packet_size", &stream_config::get_max_packet_size,
                      [](stream_config &c, std::size_t v) { c.set_max_packet_size(v); })
        .def_property("rate", &stream_config::get_rate, [](stream_config &c, double v) { c.set_rate(v); })
        .def_property("burst_size", &stream_config::get_burst_size,
                      [](stream_config &c, std::size_t v) { c.set_burst_size(v); })
        .def_property("max_heaps", &stream_config::get_max_heaps,
                      [](stream_config &c, std::size_t v) { c.set_max_heaps(v); })
        .def_property("burst_rate_ratio", &stream_config::get_burst_rate_ratio,
                      [](stream_config &c, double v) { c.set_burst_rate_ratio(v); })
        .def_property("rate_method", &stream_config::get_rate_method,
                      [](stream_config &c, rate_method m) { c.set_rate_method(m); })
        .def_property_readonly("burst_rate", &stream_config::get_burst_rate);

    py::class_<py_heap_reference>(send, "HeapReference")
        .def(py::init<py::object, std::int64_t, std::size_t, double>(), py::arg("heap"), py::kw_only(),
             py::arg("cnt") = -1, py::arg("substream_index") = 0, py::arg("rate") = -1.0)
        .def_property_readonly("heap", [](const py_heap_reference &r) { return r.heap; })
        .def_readwrite("cnt", &py_heap_reference::cnt)
        .def_readwrite("substream_index", &py_heap_reference::substream_index)
        .def_readwrite("rate", &py_heap_reference::rate);

    py::class_<py_heap_reference_list>(send, "HeapReferenceList")
        .def(py::init<const std::vector<const py_heap_reference *> &>(), py::arg("heaps"))
        .def("__len__", [](const py_heap_reference_list &l) { return l.refs.size(); })
        .def("__getitem__", [](const py_heap_reference_list &l, const py::slice &slice) {
            std::size_t start, stop, step, length;
            if (!slice.compute(l.refs.size(), &start, &stop, &step, &length))
                throw py::error_already_set();
            py_heap_reference_list out;
            for (std::size_t i = 0; i < length; i++, start += step)
            {
                out.refs.push_back(l.refs[start]);
                out.keepalive.push_back(l.keepalive[start]);
            }
            return out;
        }, py::arg("slice"));

    // A Python iterator over the packets of one heap, as bytes.
    struct py_packet_generator
    {
        py::object heap;
        packet_generator gen;
        std::vector<std::uint8_t> scratch;
        py_packet_generator(py::object heap, std::uint64_t cnt, std::size_t max_packet_size)
            : heap(heap),
              gen(heap_of(heap).h, std::int64_t(cnt & ((std::uint64_t(1) << heap_of(heap).h.get_heap_address_bits()) - 1)),
                  max_packet_size),
              scratch(max_packet_size)
        {
        }
    };
    py::class_<py_packet_generator>(send, "PacketGenerator")
        .def(py::init([](py::object heap, std::uint64_t cnt, std::size_t max_packet_size) {
                 if (max_packet_size < MIN_PACKET_SIZE)
                     throw py::value_error("packet size is too small");
                 return std::make_unique<py_packet_generator>(heap, cnt, max_packet_size);
             }),
             py::arg("heap"), py::arg("cnt"), py::arg("max_packet_size"))
        .def("__iter__", [](py::object self) { return self; })
        .def("__next__", [](py_packet_generator &g) {
            if (!g.gen.has_next())
                throw py::stop_iteration();
            std::size_t n = g.gen.next_packet(g.scratch.data());
            return py::bytes(reinterpret_cast<const char *>(g.scratch.data()), n);
        });

    // Test support: a clock that only moves when told to, so that a paced
    // stream's schedule (and its pcap timestamps) can be checked exactly.
    py::class_<manual_clock_source>(send, "_ManualClock")
        .def(py::init([](double start) { return std::make_unique<manual_clock_source>(std::int64_t(start * 1e9)); }),
             py::arg("start") = 0.0)
        .def("advance", [](manual_clock_source &c, double seconds) {
                 if (!(seconds >= 0.0))
                     throw std::invalid_argument("a manual clock only moves forward");
                 c.advance(std::int64_t(seconds * 1e9));
             }, py::arg("seconds"))
        .def_property_readonly("now", [](const manual_clock_source &c) { return c.get_ns() * 1e-9; })
        .def_property_readonly("now_ns", &manual_clock_source::get_ns)
        .def_property_readonly("sleeps", &manual_clock_source::get_sleeps);

    py::class_<stream> base(send, "Stream");
    base.def("_set_clock", [](stream &s, manual_clock_source *c) { s.set_clock(c); },
             py::arg("clock").none(true), py::keep_alive<1, 2>())
        .def("set_cnt_sequence", [](stream &s, std::uint64_t next, std::uint64_t step) {
                 s.set_cnt_sequence(std::int64_t(next), std::int64_t(step));
             }, py::arg("next"), py::arg("step"))
        .def("flush", [](stream &s) { without_gil([&] { s.flush(); }); })
        .def_property_readonly("num_substreams", &stream::num_substreams);
    add_stream_methods(base);

    py::class_<inproc_stream, stream> inproc(send, "InprocStream");
    inproc.def(py::init([](std::shared_ptr<thread_pool>, std::vector<std::shared_ptr<transport::inproc_queue>> queues,
                           const stream_config &config) {
                   return std::make_unique<inproc_stream>(config, std::move(queues));
               }),
               py::arg("thread_pool"), py::arg("queues"), py::arg("config") = stream_config())
        .def_property_readonly("queues", &inproc_stream::get_queues);

    py::class_<bytes_stream, stream> bytes_cls(send, "BytesStream");
    bytes_cls.def(py::init([](std::shared_ptr<thread_pool>, const stream_config &config) {
                      return std::make_unique<bytes_stream>(config);
                  }),
                  py::arg("thread_pool"), py::arg("config") = stream_config())
        .def("getvalue", [](const bytes_stream &s) {
            const auto &d = s.get_data();
            return py::bytes(reinterpret_cast<const char *>(d.data()), d.size());
        });

    using udp_kind = udp_socket_options::kind;
    py::class_<udp_stream, stream> udp(send, "UdpStream");
    udp.def(py::init([](std::shared_ptr<thread_pool>, const endpoint_list &endpoints, const stream_config &config,
                        std::size_t buffer_size, const std::string &interface_address, bool allow_gso) {
                udp_socket_options o;
                o.buffer_size = buffer_size;
                o.interface_address = interface_address;
                o.allow_gso = allow_gso;
                return make_udp(config, endpoints, o);
            }),
            py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
            py::arg("buffer_size") = DEFAULT_UDP_SEND_BUFFER, py::arg("interface_address") = "",
            py::kw_only(), py::arg("allow_gso") = true)
        .def(py::init([](std::shared_ptr<thread_pool>, const endpoint_list &endpoints, const stream_config &config,
                         std::size_t buffer_size, int ttl, bool allow_gso) {
                 udp_socket_options o;
                 o.type = udp_kind::multicast;
                 o.buffer_size = buffer_size;
                 o.ttl = ttl;
                 o.allow_gso = allow_gso;
                 return make_udp(config, endpoints, o);
             }),
             py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
             py::arg("buffer_size") = DEFAULT_UDP_SEND_BUFFER, py::arg("ttl"),
             py::kw_only(), py::arg("allow_gso") = true)
        .def(py::init([](std::shared_ptr<thread_pool>, const endpoint_list &endpoints, const stream_config &config,
                         std::size_t buffer_size, int ttl, const std::string &interface_address, bool allow_gso) {
                 udp_socket_options o;
                 o.type = udp_kind::multicast_v4;
                 o.buffer_size = buffer_size;
                 o.ttl = ttl;
                 o.interface_address = interface_address;
                 o.allow_gso = allow_gso;
                 return make_udp(config, endpoints, o);
             }),
             py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
             py::arg("buffer_size") = DEFAULT_UDP_SEND_BUFFER, py::arg("ttl"), py::arg("interface_address"),
             py::kw_only(), py::arg("allow_gso") = true)
        .def(py::init([](std::shared_ptr<thread_pool>, const endpoint_list &endpoints, const stream_config &config,
                         std::size_t buffer_size, int ttl, unsigned int interface_index, bool allow_gso) {
                 udp_socket_options o;
                 o.type = udp_kind::multicast_v6;
                 o.buffer_size = buffer_size;
                 o.ttl = ttl;
                 o.interface_index = interface_index;
                 o.allow_gso = allow_gso;
                 return make_udp(config, endpoints, o);
             }),
             py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
             py::arg("buffer_size") = DEFAULT_UDP_SEND_BUFFER, py::arg("ttl"), py::arg("interface_index"),
             py::kw_only(), py::arg("allow_gso") = true)
        .def(py::init([](std::shared_ptr<thread_pool>, const typed_socket<SOCK_DGRAM> &socket,
                         const endpoint_list &endpoints, const stream_config &config, bool allow_gso) {
                 auto eps = resolve_socket_endpoints(endpoints);
                 udp_socket_options o;
                 o.type = udp_kind::adopt;
                 o.fd = dup_socket(socket);
                 o.allow_gso = allow_gso;
                 return std::make_unique<udp_stream>(config, std::move(eps), o);
             }),
             py::arg("thread_pool"), py::arg("socket"), py::arg("endpoints"), py::arg("config") = stream_config(),
             py::kw_only(), py::arg("allow_gso") = true)
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &DEFAULT_UDP_SEND_BUFFER)
        .def_property_readonly("using_gso", &udp_stream::using_gso);

    py::class_<tcp_stream, stream> tcp(send, "TcpStream");
    tcp.def(py::init([](std::shared_ptr<thread_pool>, const typed_socket<SOCK_STREAM> &socket,
                        const stream_config &config) {
                return std::make_unique<tcp_stream>(config, dup_socket(socket));
            }),
            py::arg("thread_pool"), py::arg("socket"), py::arg("config") = stream_config())
        .def(py::init([](std::shared_ptr<thread_pool>, const endpoint_list &endpoints, const stream_config &config,
                         std::size_t buffer_size, const std::string &interface_address,
                         std::optional<double> connect_timeout) {
                 if (endpoints.size() != 1)
                     throw std::invalid_argument("endpoints must contain exactly one element");
                 auto eps = resolve_socket_endpoints(endpoints);
                 py::gil_scoped_release nogil;
                 return std::make_unique<tcp_stream>(config, eps[0], buffer_size, interface_address,
                                                     connect_timeout ? *connect_timeout : -1.0);
             }),
             py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
             py::arg("buffer_size") = DEFAULT_TCP_SEND_BUFFER, py::arg("interface_address") = "",
             py::kw_only(), py::arg("connect_timeout") = py::none())
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &DEFAULT_TCP_SEND_BUFFER);

    py::class_<pcap_stream, stream> pcap(send, "PcapFileStream");
    pcap.def(py::init([](std::shared_ptr<thread_pool>, const std::string &filename,
                         const std::vector<std::pair<std::string, int>> &endpoints, const stream_config &config,
                         const std::pair<std::string, int> &source) {
                 auto src = resolve_endpoints({source});
                 return std::make_unique<pcap_stream>(config, filename, resolve_endpoints(endpoints), src[0]);
             }),
             py::arg("thread_pool"), py::arg("filename"), py::arg("endpoints"),
             py::arg("config") = stream_config(),
             py::arg("source") = std::pair<std::string, int>("127.0.0.1", 0));
}

} // namespace spead2::bindings
