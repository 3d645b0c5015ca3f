// Shared declarations of the binding translation units.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <thread>
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

/// Set at interpreter exit (atexit).  Threads blocked in a ring operation
/// without the GIL then never take it back: after atexit, CPython kills
/// threads that try to, which would unwind through C++ frames and abort.
bool interpreter_exiting();
/// Run @a f without the GIL.  If the interpreter starts exiting meanwhile,
/// never take the GIL back (the thread sleeps until the process ends): a
/// thread that tries is killed by CPython with a forced unwind, which aborts
/// when it crosses C++ frames ("terminate called without an active
/// exception").  For calls that may be running at exit, e.g. a send from a
/// daemon thread.
template<typename F>
auto without_gil(F &&f) -> decltype(f())
{
    struct reacquire
    {
        PyThreadState *state;
        ~reacquire()
        {
            while (interpreter_exiting())
                std::this_thread::sleep_for(std::chrono::seconds(1));
            PyEval_RestoreThread(state);
        }
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
