// Shared declarations of the binding translation units.
#pragma once

#include <pybind11/pybind11.h>

namespace spead2::chunk
{
class chunk_stream;
}

namespace spead2::bindings
{

namespace py = pybind11;

void register_common(py::module_ &m);
void register_recv(py::module_ &m);
void register_send(py::module_ &m);

/// Streams alive in this process, stopped at interpreter exit.
void register_stoppable(chunk::chunk_stream *stream);
void unregister_stoppable(chunk::chunk_stream *stream);

} // namespace spead2::bindings
