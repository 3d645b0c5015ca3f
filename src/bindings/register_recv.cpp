// spead2._spead2.recv: the submodule, and the order its parts are registered
// in (recv_parts.h says which file holds which part).
#include "bindings/module.h"
#include "bindings/py_stream.h"
#include "bindings/recv_parts.h"

namespace spead2::bindings
{

void register_recv(py::module_ &m)
{
    py::module_ recv = m.def_submodule("recv", "Receiving (compiled part)");
    register_recv_configs(recv);   // StreamConfig etc.: used as defaults below
    register_recv_readers(recv);   // UdpIbvConfig, then the _Stream base
    register_recv_chunks(recv);    // Chunk, rings, ChunkRingStream (a _Stream)
    register_recv_groups(recv);
    register_heap_stream(recv);    // Stream (a _Stream), RingStreamConfig
    register_place(recv);
}

} // namespace spead2::bindings
