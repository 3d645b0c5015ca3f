// Python bindings for the built-in place callbacks (chunk/builtin_place.h):
// parameter holders that hand out a PyCapsule in the form ChunkStreamConfig
// accepts.  python/spead2/recv/place.py wraps them.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "bindings/module.h"
#include "chunk/builtin_place.h"

namespace spead2::bindings
{

namespace
{

constexpr const char *PLACE_SIGNATURE = "void (void *, size_t, void *)";

template<typename Params>
py::object make_capsule(Params &params, void (*fn)(void *, std::size_t, void *))
{
    PyObject *cap = PyCapsule_New(reinterpret_cast<void *>(fn), PLACE_SIGNATURE, nullptr);
    if (!cap)
        throw py::error_already_set();
    py::object out = py::reinterpret_steal<py::object>(cap);
    if (PyCapsule_SetContext(cap, &params) != 0)
        throw py::error_already_set();
    return out;
}

void check_positive(std::int64_t v, const char *name)
{
    if (v <= 0)
        throw std::invalid_argument(std::string(name) + " must be positive");
}

} // anonymous namespace

void register_place(py::module_ &recv)
{
    using namespace spead2::chunk;

    py::class_<counter_place_params>(recv, "_CounterPlace")
        .def(py::init([](std::int64_t heap_size, std::int64_t heaps_per_chunk, std::int64_t cnt_first,
                         std::int64_t cnt_step, std::int64_t chunk_id_bias, bool extra) {
                 check_positive(heap_size, "heap_size");
                 check_positive(heaps_per_chunk, "heaps_per_chunk");
                 check_positive(cnt_step, "cnt_step");
                 if (cnt_first < 0)
                     throw std::invalid_argument("cnt_first must not be negative");
                 return counter_place_params{heap_size, heaps_per_chunk, cnt_first, cnt_step, chunk_id_bias, extra};
             }),
             py::kw_only(), py::arg("heap_size"), py::arg("heaps_per_chunk"), py::arg("cnt_first"),
             py::arg("cnt_step"), py::arg("chunk_id_bias"), py::arg("extra"))
        // The capsule points into this object: whoever holds the capsule must
        // hold this object too (Placement, in spead2.recv.place, does).
        .def("_capsule", [](counter_place_params &p) { return make_capsule(p, &place_by_counter); });

    py::class_<timestamp_channel_place_params>(recv, "_TimestampChannelPlace")
        .def(py::init([](std::int64_t heap_size, std::int64_t channels, std::int64_t channel_step,
                         std::int64_t timestamp_step, std::int64_t first_timestamp,
                         std::int64_t timestamps_per_chunk, std::int64_t chunk_id_bias, bool extra) {
                 check_positive(heap_size, "heap_size");
                 check_positive(channels, "channels");
                 check_positive(channel_step, "channel_step");
                 check_positive(timestamp_step, "timestamp_step");
                 check_positive(timestamps_per_chunk, "timestamps_per_chunk");
                 if (first_timestamp < 0)
                     throw std::invalid_argument("first_timestamp must not be negative");
                 return timestamp_channel_place_params{heap_size, channels, channel_step, timestamp_step,
                                                       first_timestamp, timestamps_per_chunk, chunk_id_bias, extra};
             }),
             py::kw_only(), py::arg("heap_size"), py::arg("channels"), py::arg("channel_step"),
             py::arg("timestamp_step"), py::arg("first_timestamp"), py::arg("timestamps_per_chunk"),
             py::arg("chunk_id_bias"), py::arg("extra"))
        .def("_capsule", [](timestamp_channel_place_params &p) {
                 return make_capsule(p, &place_by_timestamp_channel);
             });
}

} // namespace spead2::bindings
