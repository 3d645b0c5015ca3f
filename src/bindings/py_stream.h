// Binding pieces shared by every stream class: the Python StreamConfig, the
// Python-side holder of a stream (_Stream), and blocking ring operations that
// let Python handle signals.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "bindings/module.h"
#include "chunk/config.h"
#include "transport/stream_control.h"
#include "transport/ibv/ibv_reader.h"

namespace spead2::bindings
{

// How often a blocking ring operation wakes to let Python handle signals.
constexpr auto SIGNAL_POLL_INTERVAL = std::chrono::milliseconds(50);

struct py_stream_config
{
    chunk::stream_config cfg;
    py::object memory_allocator = py::none();
};

// Run a blocking ring operation without the GIL, waking regularly to let
// Python raise KeyboardInterrupt.
template<typename F>
auto interruptible(F &&attempt)
{
    for (;;)
    {
        auto result = without_gil([&] {
            ring_waiters()++;
            auto r = attempt();
            ring_waiters()--;
            return r;
        });
        if (result)
            return result;
        if (PyErr_CheckSignals() != 0)
            throw py::error_already_set();
    }
}

// What a Python stream object (Stream, ChunkRingStream, ChunkStreamGroupMember)
// holds besides the C++ stream: the Python objects its readers and callbacks
// use, kept alive as long as the stream.
struct py_stream
{
    py::object place;          // keeps the place callback's owner alive
    py::object thread_pool;
    py::object allocator;      // keeps a memory allocator alive
    std::vector<std::unique_ptr<py::buffer_info>> buffers;   // buffer-reader memory
    std::vector<std::string> ibv_kinds;                      // for diagnostics: "mprq" / "plain"
    std::vector<std::shared_ptr<const transport::ibv_reader_stats>> ibv_stats;

    py_stream() = default;
    py_stream(const py_stream &) = delete;
    virtual ~py_stream() = default;
    /// The C++ stream (RuntimeError once destroyed).
    virtual transport::stream_control &get() = 0;
};

/// spead2.recv.Stream, Heap, IncompleteHeap, RingStreamConfig (register_heap.cpp).
void register_heap_stream(py::module_ &recv);
/// The built-in place callbacks' parameter holders (register_place.cpp).
void register_place(py::module_ &recv);

} // namespace spead2::bindings
