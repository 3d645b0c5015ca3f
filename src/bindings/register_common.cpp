// Python bindings for the top-level spead2 module: thread pool, exceptions,
// constants, in-process queues, logging and interpreter-exit handling.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <mutex>
#include <thread>
#include <functional>
#include <map>

#include "bindings/module.h"
#include "chunk/chunk_stream.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "common/memcpy.h"
#include "common/ringbuffer.h"
#include "common/thread_pool.h"
#include "protocol/spead.h"
#include "transport/mem/mem_reader.h"

namespace spead2::bindings
{

namespace
{

std::mutex stoppables_mutex;
std::map<const void *, std::function<void()>> stoppables;
bool exiting = false;   // under gil_gate
// The gate between reacquire_gil and the atexit handler: `exiting` is set,
// and `reacquiring` counted, under this mutex.
std::mutex gil_gate;
int reacquiring = 0;

void stop_everything()
{
    {
        std::lock_guard<std::mutex> lock(gil_gate);
        exiting = true;
    }
    // Threads that passed the gate before are waiting for the GIL (or about
    // to): let them have it now, while CPython still hands it over; once
    // finalisation begins it would kill them instead.
    for (;;)
    {
        {
            std::lock_guard<std::mutex> lock(gil_gate);
            if (reacquiring == 0)
                break;
        }
        py::gil_scoped_release nogil;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (ring_waiters().load() > 0)
    {
        // Give blocked threads time to notice (they wake at least every 50 ms).
        py::gil_scoped_release nogil;
        std::this_thread::sleep_for(std::chrono::milliseconds(120));
    }
    std::vector<std::function<void()>> stops;
    {
        std::lock_guard<std::mutex> lock(stoppables_mutex);
        for (auto &entry : stoppables)
            stops.push_back(entry.second);
    }
    for (auto &stop : stops)
        stop();
    py::gil_scoped_release nogil;
    stop_log_delivery();
}

} // anonymous namespace

void reacquire_gil(PyThreadState *state) noexcept
{
    bool proceed;
    {
        std::lock_guard<std::mutex> lock(gil_gate);
        proceed = !exiting;
        if (proceed)
            reacquiring++;
    }
    if (!proceed)
    {
        for (;;)
            std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    PyEval_RestoreThread(state);
    std::lock_guard<std::mutex> lock(gil_gate);
    reacquiring--;
}

std::atomic<int> &ring_waiters()
{
    static std::atomic<int> count{0};
    return count;
}

void register_stoppable(const void *key, std::function<void()> stop)
{
    std::lock_guard<std::mutex> lock(stoppables_mutex);
    stoppables[key] = std::move(stop);
}

void unregister_stoppable(const void *key)
{
    std::lock_guard<std::mutex> lock(stoppables_mutex);
    stoppables.erase(key);
}

void register_common(py::module_ &m)
{
    namespace p = spead2::protocol;
    m.attr("NULL_ID") = p::NULL_ID;
    m.attr("HEAP_CNT_ID") = p::HEAP_CNT_ID;
    m.attr("HEAP_LENGTH_ID") = p::HEAP_LENGTH_ID;
    m.attr("PAYLOAD_OFFSET_ID") = p::PAYLOAD_OFFSET_ID;
    m.attr("PAYLOAD_LENGTH_ID") = p::PAYLOAD_LENGTH_ID;
    m.attr("DESCRIPTOR_ID") = p::DESCRIPTOR_ID;
    m.attr("STREAM_CTRL_ID") = p::STREAM_CTRL_ID;
    m.attr("DESCRIPTOR_NAME_ID") = p::DESCRIPTOR_NAME_ID;
    m.attr("DESCRIPTOR_DESCRIPTION_ID") = p::DESCRIPTOR_DESCRIPTION_ID;
    m.attr("DESCRIPTOR_SHAPE_ID") = p::DESCRIPTOR_SHAPE_ID;
    m.attr("DESCRIPTOR_FORMAT_ID") = p::DESCRIPTOR_FORMAT_ID;
    m.attr("DESCRIPTOR_ID_ID") = p::DESCRIPTOR_ID_ID;
    m.attr("DESCRIPTOR_DTYPE_ID") = p::DESCRIPTOR_DTYPE_ID;
    m.attr("CTRL_STREAM_START") = p::CTRL_STREAM_START;
    m.attr("CTRL_DESCRIPTOR_REISSUE") = p::CTRL_DESCRIPTOR_REISSUE;
    m.attr("CTRL_STREAM_STOP") = p::CTRL_STREAM_STOP;
    m.attr("CTRL_DESCRIPTOR_UPDATE") = p::CTRL_DESCRIPTOR_UPDATE;
    m.attr("BUG_COMPAT_DESCRIPTOR_WIDTHS") = p::BUG_COMPAT_DESCRIPTOR_WIDTHS;
    m.attr("BUG_COMPAT_SHAPE_BIT_1") = p::BUG_COMPAT_SHAPE_BIT_1;
    m.attr("BUG_COMPAT_SWAP_ENDIAN") = p::BUG_COMPAT_SWAP_ENDIAN;
    m.attr("BUG_COMPAT_PYSPEAD_0_5_2") = p::BUG_COMPAT_PYSPEAD_0_5_2;
    m.attr("MEMCPY_STD") = MEMCPY_STD;
    m.attr("MEMCPY_NONTEMPORAL") = MEMCPY_NONTEMPORAL;

    // Exceptions (base class Exception, as in the reference)
    static py::exception<ringbuffer_stopped> stopped_exc(m, "Stopped");
    static py::exception<ringbuffer_empty> empty_exc(m, "Empty");
    static py::exception<ringbuffer_full> full_exc(m, "Full");
    py::register_exception_translator([](std::exception_ptr p) {
        try
        {
            if (p)
                std::rethrow_exception(p);
        }
        catch (const ringbuffer_stopped &e)
        {
            py::set_error(stopped_exc, e.what());
        }
        catch (const ringbuffer_empty &e)
        {
            py::set_error(empty_exc, e.what());
        }
        catch (const ringbuffer_full &e)
        {
            py::set_error(full_exc, e.what());
        }
    });

    py::class_<thread_pool, std::shared_ptr<thread_pool>>(m, "ThreadPool")
        .def(py::init<int>(), py::arg("threads") = 1)
        .def(py::init<int, const std::vector<int> &>(), py::arg("threads"), py::arg("affinity"))
        .def_static("set_affinity", &thread_pool::set_affinity, py::arg("core"))
        .def("stop", &thread_pool::stop, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("num_threads", &thread_pool::size);

    py::class_<transport::inproc_queue, std::shared_ptr<transport::inproc_queue>>(m, "InprocQueue")
        .def(py::init<>())
        .def("add_packet", [](transport::inproc_queue &q, py::buffer packet) {
            py::buffer_info info = packet.request();
            if (!PyBuffer_IsContiguous(info.view(), 'C'))
                throw py::value_error("packet must be a C-contiguous buffer");
            q.add_packet(static_cast<const std::uint8_t *>(info.ptr), std::size_t(info.size * info.itemsize));
        }, py::arg("packet"))
        .def("stop", &transport::inproc_queue::stop);

    // Logging: deliver C++ log messages to the Python logger "spead2".
    m.def("_install_log_sink", [](py::object logger) {
        // The reference is leaked on purpose: the sink may be dropped on a
        // thread without the GIL, and the logger lives as long as Python.
        PyObject *raw = logger.release().ptr();
        set_log_sink([raw](log_level level, const std::string &msg) {
            py::gil_scoped_acquire gil;
            try
            {
                py::handle(raw).attr("log")(int(level), "%s", msg);
            }
            catch (py::error_already_set &e)
            {
                e.discard_as_unraisable("spead2 log delivery");
            }
        });
    }, py::arg("logger"));
    m.def("_set_log_threshold", [](int level) { set_log_threshold(log_level(level)); }, py::arg("level"));
    m.def("_log", [](int level, const std::string &msg) { log_message(log_level(level), "%s", msg.c_str()); });
    m.def("_set_log_limits", [](std::size_t first_logged, double summary_interval) {
              if (!(summary_interval >= 0))
                  throw py::value_error("summary_interval must not be negative");
              set_log_limits(first_logged, summary_interval);
          }, py::arg("first_logged"), py::arg("summary_interval"),
          "How many dropped packets of each kind are logged one by one before only a periodic "
          "summary is (default 5), and the shortest time between summaries in seconds (default 10).");
    m.def("_stop_everything", &stop_everything,
          "Stop all streams and log delivery (registered with atexit).");
}

} // namespace spead2::bindings
