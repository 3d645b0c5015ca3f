#include "bindings/py_chunk.h"

namespace spead2::bindings
{

held_buffer::~held_buffer()
{
    if (valid || obj.ptr() != Py_None)
    {
        py::gil_scoped_acquire gil;
        release();
        obj = py::object();
    }
}

void held_buffer::acquire(py::object o)
{
    release();
    obj = std::move(o);
    if (obj.is_none())
        return;
    if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0)
        throw py::error_already_set();
    valid = true;
}

void held_buffer::release()
{
    if (valid)
    {
        PyBuffer_Release(&view);
        valid = false;
    }
}

void check_chunk_buffer(const py::object &o)
{
    if (o.is_none())
        return;
    if (!PyObject_CheckBuffer(o.ptr()))
        throw py::type_error("chunk buffers must support the buffer protocol (or be None)");
    Py_buffer view;
    if (PyObject_GetBuffer(o.ptr(), &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0)
        throw py::error_already_set();
    PyBuffer_Release(&view);
}

py_chunk::~py_chunk()
{
    py::gil_scoped_acquire gil;
    data_buf.release();
    present_buf.release();
    extra_buf.release();
    data_buf.obj = py::object();
    present_buf.obj = py::object();
    extra_buf.obj = py::object();
    owner = py::object();
}

std::unique_ptr<chunk::chunk> chunk_to_cpp(py::handle obj)
{
    if (!py::isinstance<chunk_object>(obj))
        throw py::type_error("expected a spead2.recv.Chunk, got " + std::string(py::str(py::type::of(obj))));
    chunk_object &c = obj.cast<chunk_object &>();
    if (c.data.is_none())
        throw py::value_error("data buffer is not set");
    if (c.present.is_none())
        throw py::value_error("present buffer is not set");
    auto out = std::make_unique<py_chunk>();
    out->data_buf.acquire(c.data);
    out->present_buf.acquire(c.present);
    out->extra_buf.acquire(c.extra);
    out->chunk_id = c.chunk_id;
    out->stream_id = c.stream_id;
    out->first_packet_time = c.first_packet_time;
    out->last_packet_time = c.last_packet_time;
    out->data = out->data_buf.ptr();
    out->data_size = out->data_buf.size();
    out->present = out->present_buf.ptr();
    out->present_size = out->present_buf.size();
    out->extra = out->extra_buf.ptr();
    out->extra_size = out->extra_buf.size();
    out->owner = py::reinterpret_borrow<py::object>(obj);
    // While in flight the Python object does not expose the buffers.
    c.data = py::none();
    c.present = py::none();
    c.extra = py::none();
    return out;
}

py::object chunk_to_python(std::unique_ptr<chunk::chunk> &&base)
{
    auto *pc = dynamic_cast<py_chunk *>(base.get());
    if (!pc)
        throw std::logic_error("chunk did not come from Python");
    chunk_object &c = pc->owner.cast<chunk_object &>();
    c.chunk_id = pc->chunk_id;
    c.stream_id = pc->stream_id;
    c.first_packet_time = pc->first_packet_time == chunk::chunk::NO_FIRST_PACKET_TIME ? -1 : pc->first_packet_time;
    c.last_packet_time = pc->last_packet_time;
    pc->data_buf.release();
    pc->present_buf.release();
    pc->extra_buf.release();
    c.data = std::move(pc->data_buf.obj);
    c.present = std::move(pc->present_buf.obj);
    c.extra = std::move(pc->extra_buf.obj);
    pc->data_buf.obj = py::none();
    pc->present_buf.obj = py::none();
    pc->extra_buf.obj = py::none();
    py::object owner = std::move(pc->owner);
    base.reset();
    return owner;
}

} // namespace spead2::bindings
