// The pieces of spead2.recv's bindings that more than one file needs.
// register_recv() (register_recv.cpp) calls the register_recv_* functions
// below in order; each lives in the file named after it:
//
//   register_recv_config.cpp   stream_stat_indices, StreamStatConfig,
//                              StreamConfig, ChunkStreamConfig
//   register_recv_readers.cpp  UdpIbvConfig, _Stream (start/stop and every
//                              add_*_reader), _ibv_compiled/_ibv_probe
//   register_recv_chunk.cpp    Chunk, ChunkRingbuffer, ChunkRingPair,
//                              ChunkRingStream
//   register_recv_group.cpp    ChunkStreamGroupConfig, ChunkStreamGroupMember,
//                              ChunkStreamRingGroup
//   register_heap.cpp          RingStreamConfig, Stream, heaps (py_stream.h)
//   register_place.cpp         built-in place callbacks (py_stream.h)
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "bindings/py_stream.h"
#include "chunk/config.h"
#include "chunk/ring_stream.h"

namespace spead2::bindings
{

/// spead2.recv.ChunkStreamConfig: the C++ config, and the Python object given
/// as ``place`` (returned by the property, and kept alive with the stream).
struct py_chunk_stream_config
{
    chunk::chunk_stream_config cfg;
    py::object place = py::none();
};

/// spead2.recv.ChunkRingPair: what ChunkRingStream and ChunkStreamRingGroup
/// share (the two rings, as given from Python, and the free ring to refill).
struct py_ring_pair
{
    py::object data_ringbuffer;
    py::object free_ringbuffer;
    std::shared_ptr<chunk::chunk_ringbuffer> free_ring;

    /// Zero the chunk's present flags and put it on the free ring.
    void add_free_chunk(py::handle obj);
};

/// Registration order matters to pybind11: a type named in a signature or
/// used as a default argument must be registered first.
void register_recv_configs(py::module_ &recv);
void register_recv_readers(py::module_ &recv);
void register_recv_chunks(py::module_ &recv);
void register_recv_groups(py::module_ &recv);

} // namespace spead2::bindings
