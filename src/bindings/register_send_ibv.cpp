// Python bindings for sending with ibverbs: spead2.send.UdpIbvConfig and
// spead2.send.UdpIbvStream (the asyncio variant is made in Python).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "bindings/module.h"
#include "common/thread_pool.h"
#include "send/stream.h"
#include "send/udp_ibv_stream.h"
#include "transport/ibv/ibv_sender.h"

namespace spead2::bindings
{

namespace
{

using endpoint_list = std::vector<std::pair<std::string, std::uint16_t>>;

/// UdpIbvConfig: the C++ configuration plus the Python objects of the
/// memory regions (the buffers are only taken when a stream is made).
struct py_udp_ibv_config
{
    transport::ibv_send_config config;
    std::vector<py::object> memory_regions;
};

/// The buffers of the memory regions, held by the stream for as long as the
/// NIC may read them (udp_ibv_stream releases its keepalive only after it
/// has deregistered them).
struct region_buffers
{
    std::vector<Py_buffer> views;
    region_buffers() = default;
    region_buffers(const region_buffers &) = delete;
    region_buffers &operator=(const region_buffers &) = delete;
    ~region_buffers()
    {
        py::gil_scoped_acquire gil;
        for (auto &v : views)
            PyBuffer_Release(&v);
    }
    /// Take the buffers of @a regions and point @a c's memory regions at them.
    const transport::ibv_send_config &take(const std::vector<py::object> &regions, transport::ibv_send_config &c)
    {
        c.memory_regions.clear();
        for (const auto &obj : regions)
        {
            add(obj);
            c.memory_regions.emplace_back(views.back().buf, std::size_t(views.back().len));
        }
        return c;
    }
    void add(const py::object &obj)
    {
        Py_buffer view;
        // C-contiguous (numpy says "ndarray is not C-contiguous" otherwise,
        // as with the reference); read-only buffers are fine: the NIC only reads.
        if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0)
            throw py::error_already_set();
        views.push_back(view);
    }
};

} // anonymous namespace

void register_send_ibv(py::module_ &m)
{
    py::module_ send = m.attr("send").cast<py::module_>();
    using transport::ibv_send_config;

    py::class_<py_udp_ibv_config>(send, "UdpIbvConfig")
        .def(py::init([](endpoint_list endpoints, std::string interface_address, std::size_t buffer_size,
                         std::uint8_t ttl, int comp_vector, int max_poll, const std::vector<py::buffer> &regions) {
                 auto c = std::make_unique<py_udp_ibv_config>();
                 c->config.endpoints = std::move(endpoints);
                 c->config.interface_address = std::move(interface_address);
                 c->config.set_buffer_size(buffer_size);
                 c->config.ttl = ttl;
                 c->config.comp_vector = comp_vector;
                 c->config.set_max_poll(max_poll);
                 c->memory_regions.assign(regions.begin(), regions.end());
                 return c;
             }),
             py::kw_only(), py::arg("endpoints") = endpoint_list(), py::arg("interface_address") = "",
             py::arg("buffer_size") = transport::IBV_SEND_DEFAULT_BUFFER_SIZE, py::arg("ttl") = 1,
             py::arg("comp_vector") = 0, py::arg("max_poll") = transport::IBV_SEND_DEFAULT_MAX_POLL,
             py::arg("memory_regions") = std::vector<py::buffer>())
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &transport::IBV_SEND_DEFAULT_BUFFER_SIZE)
        .def_readonly_static("DEFAULT_MAX_POLL", &transport::IBV_SEND_DEFAULT_MAX_POLL)
        .def_property("endpoints",
            [](const py_udp_ibv_config &c) { return c.config.endpoints; },
            [](py_udp_ibv_config &c, endpoint_list v) { c.config.endpoints = std::move(v); })
        .def_property("interface_address",
            [](const py_udp_ibv_config &c) { return c.config.interface_address; },
            [](py_udp_ibv_config &c, std::string v) { c.config.interface_address = std::move(v); })
        .def_property("buffer_size",
            [](const py_udp_ibv_config &c) { return c.config.buffer_size; },
            [](py_udp_ibv_config &c, std::size_t v) { c.config.set_buffer_size(v); })
        .def_property("ttl",
            [](const py_udp_ibv_config &c) { return c.config.ttl; },
            [](py_udp_ibv_config &c, std::uint8_t v) { c.config.ttl = v; })
        .def_property("comp_vector",
            [](const py_udp_ibv_config &c) { return c.config.comp_vector; },
            [](py_udp_ibv_config &c, int v) { c.config.comp_vector = v; })
        .def_property("max_poll",
            [](const py_udp_ibv_config &c) { return c.config.max_poll; },
            [](py_udp_ibv_config &c, int v) { c.config.set_max_poll(v); })
        .def_property("memory_regions",
            [](const py_udp_ibv_config &c) {
                py::list out;
                for (const auto &obj : c.memory_regions)
                    out.append(obj);
                return out;
            },
            [](py_udp_ibv_config &c, const std::vector<py::buffer> &v) {
                c.memory_regions.assign(v.begin(), v.end());
            });

    py::class_<send::udp_ibv_stream, send::stream>(send, "UdpIbvStream")
        .def(py::init([](std::shared_ptr<thread_pool>, const send::stream_config &config,
                         const py_udp_ibv_config &udp_ibv_config) {
                 auto buffers = std::make_shared<region_buffers>();
                 transport::ibv_send_config c = udp_ibv_config.config;
                 buffers->take(udp_ibv_config.memory_regions, c);
                 return std::make_unique<send::udp_ibv_stream>(config, c, std::move(buffers));
             }),
             py::arg("thread_pool"), py::arg("config") = send::stream_config(), py::arg("udp_ibv_config"))
        .def_property_readonly("_ibv_stats", [](const send::udp_ibv_stream &s) {
            // For tests and diagnostics (not part of the reference's API).
            const auto st = s.get_sender_stats();
            py::dict d;
            d["packets"] = st.packets;
            d["zero_copy_bytes"] = st.zero_copy_bytes;
            d["copied_bytes"] = st.copied_bytes;
            d["error_completions"] = st.error_completions;
            return d;
        });
}

} // namespace spead2::bindings
