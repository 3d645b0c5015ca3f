// Python bindings for the compiled part of spead2.send.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/module.h"
#include "common/thread_pool.h"
#include "send/heap.h"
#include "send/stream.h"
#include "transport/mem/mem_reader.h"

namespace spead2::bindings
{

namespace
{

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

template<typename Stream>
std::size_t send_heap(Stream &s, const py_heap &h, std::int64_t cnt, std::size_t substream_index)
{
    py::gil_scoped_release nogil;
    return s.send_heap(h.h, cnt, substream_index);
}

template<typename Stream, typename Class>
void add_stream_methods(Class &cls)
{
    cls.def("send_heap", &send_heap<Stream>, py::arg("heap"), py::arg("cnt") = -1,
            py::arg("substream_index") = 0)
        .def("set_cnt_sequence", &Stream::set_cnt_sequence, py::arg("next"), py::arg("step"))
        .def("flush", &Stream::flush, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("num_substreams", &Stream::num_substreams);
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

    py::class_<stream_config>(send, "StreamConfig")
        .def(py::init([](std::size_t max_packet_size, double rate, std::size_t burst_size,
                         std::size_t max_heaps, double burst_rate_ratio) {
                 stream_config c;
                 c.set_max_packet_size(max_packet_size).set_rate(rate).set_burst_size(burst_size)
                     .set_max_heaps(max_heaps).set_burst_rate_ratio(burst_rate_ratio);
                 return c;
             }),
             py::arg("max_packet_size") = DEFAULT_MAX_PACKET_SIZE, py::arg("rate") = 0.0,
             py::arg("burst_size") = DEFAULT_BURST_SIZE, py::arg("max_heaps") = DEFAULT_MAX_HEAPS,
             py::arg("burst_rate_ratio") = DEFAULT_BURST_RATE_RATIO)
        .def_readonly_static("DEFAULT_MAX_PACKET_SIZE", &DEFAULT_MAX_PACKET_SIZE)
        .def_readonly_static("DEFAULT_MAX_HEAPS", &DEFAULT_MAX_HEAPS)
        .def_readonly_static("DEFAULT_BURST_SIZE", &DEFAULT_BURST_SIZE)
        .def_readonly_static("DEFAULT_BURST_RATE_RATIO", &DEFAULT_BURST_RATE_RATIO)
        .def_property("max_packet_size", &stream_config::get_max_packet_size,
                      [](stream_config &c, std::size_t v) { c.set_max_packet_size(v); })
        .def_property("rate", &stream_config::get_rate, [](stream_config &c, double v) { c.set_rate(v); })
        .def_property("burst_size", &stream_config::get_burst_size,
                      [](stream_config &c, std::size_t v) { c.set_burst_size(v); })
        .def_property("max_heaps", &stream_config::get_max_heaps,
                      [](stream_config &c, std::size_t v) { c.set_max_heaps(v); })
        .def_property("burst_rate_ratio", &stream_config::get_burst_rate_ratio,
                      [](stream_config &c, double v) { c.set_burst_rate_ratio(v); });

    py::class_<inproc_stream> inproc(send, "InprocStream");
    inproc.def(py::init([](std::shared_ptr<thread_pool>, std::vector<std::shared_ptr<transport::inproc_queue>> queues,
                           const stream_config &config) {
                   return std::make_unique<inproc_stream>(config, std::move(queues));
               }),
               py::arg("thread_pool"), py::arg("queues"), py::arg("config") = stream_config())
        .def_property_readonly("queues", &inproc_stream::get_queues);
    add_stream_methods<inproc_stream>(inproc);

    py::class_<bytes_stream> bytes_cls(send, "BytesStream");
    bytes_cls.def(py::init([](std::shared_ptr<thread_pool>, const stream_config &config) {
                      return std::make_unique<bytes_stream>(config);
                  }),
                  py::arg("thread_pool"), py::arg("config") = stream_config())
        .def("getvalue", [](const bytes_stream &s) {
            const auto &d = s.get_data();
            return py::bytes(reinterpret_cast<const char *>(d.data()), d.size());
        });
    add_stream_methods<bytes_stream>(bytes_cls);

    py::class_<udp_stream> udp(send, "UdpStream");
    udp.def(py::init([](std::shared_ptr<thread_pool>, const std::vector<std::pair<std::string, int>> &endpoints,
                        const stream_config &config, std::size_t buffer_size,
                        const std::string &interface_address, py::object ttl, bool allow_gso) {
                return std::make_unique<udp_stream>(config, resolve_endpoints(endpoints), buffer_size,
                                                    interface_address, ttl.is_none() ? -1 : ttl.cast<int>(),
                                                    allow_gso);
            }),
            py::arg("thread_pool"), py::arg("endpoints"), py::arg("config") = stream_config(),
            py::arg("buffer_size") = DEFAULT_UDP_SEND_BUFFER, py::arg("interface_address") = "",
            py::arg("ttl") = py::none(), py::arg("allow_gso") = true)
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &DEFAULT_UDP_SEND_BUFFER)
        .def_property_readonly("using_gso", &udp_stream::using_gso);
    add_stream_methods<udp_stream>(udp);

    py::class_<pcap_stream> pcap(send, "PcapFileStream");
    pcap.def(py::init([](std::shared_ptr<thread_pool>, const std::string &filename,
                         const std::vector<std::pair<std::string, int>> &endpoints, const stream_config &config,
                         const std::pair<std::string, int> &source) {
                 auto src = resolve_endpoints({source});
                 return std::make_unique<pcap_stream>(config, filename, resolve_endpoints(endpoints), src[0]);
             }),
             py::arg("thread_pool"), py::arg("filename"), py::arg("endpoints"),
             py::arg("config") = stream_config(),
             py::arg("source") = std::pair<std::string, int>("127.0.0.1", 0));
    add_stream_methods<pcap_stream>(pcap);
}

} // namespace spead2::bindings
