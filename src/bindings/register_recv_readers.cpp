// Python bindings for what every spead2.recv stream has (the reference's
// _Stream base): start/stop, statistics, and the add_*_reader methods that
// attach a transport (src/transport) to the stream.  Also UdpIbvConfig and
// the ibverbs probe behind spead2_ibv_check.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "bindings/recv_parts.h"
#include "transport/ibv/ibv_probe.h"
#include "transport/ibv/ibv_reader.h"
#include "transport/mem/mem_reader.h"
#include "transport/pcap/pcap_reader.h"
#include "transport/tcp/tcp_reader.h"
#include "transport/udp/udp_reader.h"

namespace spead2::bindings
{

namespace
{

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

void register_udp_ibv_config(py::module_ &recv)
{
    using endpoint_list = std::vector<std::pair<std::string, std::uint16_t>>;
    const transport::ibv_config defaults;
    py::class_<transport::ibv_config>(recv, "UdpIbvConfig")
        .def(py::init([](endpoint_list endpoints, std::string interface_address, std::size_t buffer_size,
                         std::size_t max_size, int comp_vector, int max_poll) {
                 transport::ibv_config c;
                 c.endpoints = std::move(endpoints);
                 c.interface_address = std::move(interface_address);
                 c.set_buffer_size(buffer_size);
                 c.set_max_size(max_size);
                 c.comp_vector = comp_vector;
                 c.set_max_poll(max_poll);
                 return c;
             }),
             py::kw_only(),
             py::arg("endpoints") = defaults.endpoints,
             py::arg("interface_address") = defaults.interface_address,
             py::arg("buffer_size") = defaults.buffer_size,
             py::arg("max_size") = defaults.max_size,
             py::arg("comp_vector") = defaults.comp_vector,
             py::arg("max_poll") = defaults.max_poll)
        .def_readonly_static("DEFAULT_BUFFER_SIZE", &transport::IBV_DEFAULT_BUFFER_SIZE)
        .def_readonly_static("DEFAULT_MAX_SIZE", &transport::IBV_DEFAULT_MAX_SIZE)
        .def_readonly_static("DEFAULT_MAX_POLL", &transport::IBV_DEFAULT_MAX_POLL)
        .def_property("endpoints",
            [](const transport::ibv_config &c) { return c.endpoints; },
            [](transport::ibv_config &c, endpoint_list v) { c.endpoints = std::move(v); })
        .def_readwrite("interface_address", &transport::ibv_config::interface_address)
        .def_property("buffer_size", [](const transport::ibv_config &c) { return c.buffer_size; },
                      &transport::ibv_config::set_buffer_size)
        .def_property("max_size", [](const transport::ibv_config &c) { return c.max_size; },
                      &transport::ibv_config::set_max_size)
        .def_readwrite("comp_vector", &transport::ibv_config::comp_vector)
        .def_property("max_poll", [](const transport::ibv_config &c) { return c.max_poll; },
                      &transport::ibv_config::set_max_poll);
}

} // anonymous namespace

void register_recv_readers(py::module_ &recv)
{
    // UdpIbvConfig first: add_udp_ibv_reader's signature names it.
    register_udp_ibv_config(recv);

    // The methods every stream class has (the reference's _Stream base).
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
           py::arg("buffer_size") = transport::DEFAULT_UDP_BUFFER_SIZE,
           py::arg("interface_index") = 0u)   // as the reference; unused (without it, overload 2 matches)
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

    register_ibv_probe(recv);
}

} // namespace spead2::bindings
