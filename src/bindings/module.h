// Shared declarations of the binding translation units.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <functional>

namespace spead2::chunk
{
class chunk_stream;
}

namespace spead2::bindings
{

namespace py = pybind11;

void register_common(py::module_ &m);
/// MemoryAllocator, MmapAllocator, MemoryPool (register_memory.cpp).
void register_memory(py::module_ &m);
void register_recv(py::module_ &m);
void register_send(py::module_ &m);
/// spead2.send.UdpIbvConfig / UdpIbvStream (register_send_ibv.cpp); after register_send.
void register_send_ibv(py::module_ &m);

/// Take the GIL back after a without_gil call, unless the interpreter is
/// exiting (the atexit handler has run); then the thread sleeps until the
/// process ends.  The check is one step with the atexit handler, which lets
/// every thread already past it take the GIL before finalisation begins
/// (register_common.cpp); a check followed by a separate wait for the GIL
/// left a window in which CPython killed the thread.
void reacquire_gil(PyThreadState *state) noexcept;
/// Run @a f without the GIL.  If the interpreter starts exiting meanwhile,
/// never take the GIL back (the thread sleeps until the process ends): a
/// thread that tries is killed by CPython with a forced unwind, which aborts
/// when it crosses C++ frames ("terminate called without an active
/// exception").  For calls that may be running at exit, e.g. a send from a
/// daemon thread, or a consumer blocked on a ring.
template<typename F>
auto without_gil(F &&f) -> decltype(f())
{
    struct reacquire
    {
        PyThreadState *state;
        ~reacquire() { reacquire_gil(state); }
    } guard{PyEval_SaveThread()};
    return f();
}

/// Number of threads currently blocked in a ring operation without the GIL.
std::atomic<int> &ring_waiters();

/// Streams and groups alive in this process, stopped at interpreter exit
/// (@a stop runs with the GIL held).
void register_stoppable(const void *key, std::function<void()> stop);
void unregister_stoppable(const void *key);

} // namespace spead2::bindings
