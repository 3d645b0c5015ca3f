// Translation between the Python Chunk object and the C++ chunk.
//
// A Python Chunk holds Python buffer objects.  When it is put into a ring its
// buffers are moved into a py_chunk (a C++ chunk that also holds a reference
// to the Python object); when it comes out, they are moved back and the very
// same Python object is returned.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "chunk/config.h"
#include "chunk/ring_stream.h"

namespace spead2::bindings
{

namespace py = pybind11;

/// A Python buffer held for writing, released with the GIL.
class held_buffer
{
    Py_buffer view{};
    bool valid = false;
public:
    py::object obj = py::none();
    held_buffer() = default;
    held_buffer(const held_buffer &) = delete;
    held_buffer &operator=(const held_buffer &) = delete;
    ~held_buffer();
    /// Acquire a writable C-contiguous view of @a o (None allowed: empty).
    void acquire(py::object o);
    void release();
    std::uint8_t *ptr() const { return valid ? static_cast<std::uint8_t *>(view.buf) : nullptr; }
    std::size_t size() const { return valid ? std::size_t(view.len) : 0; }
};

/// Check that @a o is None or a writable C-contiguous buffer (raises otherwise).
void check_chunk_buffer(const py::object &o);

/// The Python-visible Chunk.
struct chunk_object
{
    std::int64_t chunk_id = -1;
    std::uintptr_t stream_id = 0;
    std::int64_t first_packet_time = -1;
    std::int64_t last_packet_time = -1;
    py::object data = py::none();
    py::object present = py::none();
    py::object extra = py::none();
};

/// A chunk in flight: owns the buffers and the Python object.
struct py_chunk : public chunk::chunk
{
    py::object owner;
    held_buffer data_buf, present_buf, extra_buf;
    ~py_chunk() override;
};

/// Move the buffers of the Python chunk @a obj into a new py_chunk (GIL held).
std::unique_ptr<chunk::chunk> chunk_to_cpp(py::handle obj);
/// Move them back and return the original Python object (GIL held).
py::object chunk_to_python(std::unique_ptr<chunk::chunk> &&c);

} // namespace spead2::bindings
