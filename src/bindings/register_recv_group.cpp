// Python bindings for chunk stream groups (src/chunk/chunk_group.h):
// ChunkStreamGroupConfig, ChunkStreamGroupMember and ChunkStreamRingGroup,
// whose members share one data ring and one free ring.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings/recv_parts.h"
#include "chunk/ring_stream.h"

namespace spead2::bindings
{

namespace
{

using namespace spead2::chunk;

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

/// A member of a group as a Python object: the same object for the same
/// member while it is alive, keeping the group alive.
py::object member_object(py_ring_group &self, py::handle self_obj, std::size_t index)
{
    return py::cast(self.members[index].get(), py::return_value_policy::reference_internal, self_obj);
}

} // anonymous namespace

void register_recv_groups(py::module_ &recv)
{
    const chunk_group_config group_defaults;
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
             py::kw_only(), py::arg("max_chunks") = group_defaults.get_max_chunks(),
             py::arg("eviction_mode") = group_defaults.get_eviction_mode())
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
             py::arg("thread_pool"), py::arg_v("config", py_stream_config(), "StreamConfig()"), py::arg("chunk_stream_config"))
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
}

} // namespace spead2::bindings
