// Python bindings for heap payload memory: MemoryAllocator (the default,
// operator new), MmapAllocator and MemoryPool.  Translation only: the
// allocators live in src/heap.
#include <pybind11/pybind11.h>

#include "bindings/module.h"
#include "heap/memory.h"
#include "heap/memory_pool.h"
#include "heap/mmap_allocator.h"

namespace spead2::bindings
{

void register_memory(py::module_ &m)
{
    using heap::memory_allocator;
    using heap::memory_pool;
    using heap::mmap_allocator;

    py::class_<memory_allocator, std::shared_ptr<memory_allocator>>(m, "MemoryAllocator")
        .def(py::init([]() -> std::shared_ptr<memory_allocator> { return std::make_shared<heap::default_allocator>(); }));

    py::class_<mmap_allocator, memory_allocator, std::shared_ptr<mmap_allocator>>(m, "MmapAllocator")
        .def(py::init<int, bool>(), py::arg("flags") = 0, py::arg("prefer_huge") = false);

    py::class_<memory_pool, memory_allocator, std::shared_ptr<memory_pool>>(m, "MemoryPool")
        .def(py::init<std::size_t, std::size_t, std::size_t, std::size_t, std::shared_ptr<memory_allocator>>(),
             py::arg("lower"), py::arg("upper"), py::arg("max_free"), py::arg("initial"),
             py::arg("allocator") = nullptr)
        .def(py::init([](std::shared_ptr<thread_pool> pool, std::size_t lower, std::size_t upper,
                         std::size_t max_free, std::size_t initial, std::size_t low_water,
                         std::shared_ptr<memory_allocator> allocator) {
                 if (!pool)
                     throw py::type_error("thread_pool must not be None");
                 auto self = std::make_shared<memory_pool>(std::move(pool), lower, upper, max_free, initial,
                                                           low_water, std::move(allocator));
                 self->top_up();
                 return self;
             }),
             py::arg("thread_pool"), py::arg("lower"), py::arg("upper"), py::arg("max_free"),
             py::arg("initial"), py::arg("low_water"), py::arg("allocator") = nullptr)
        .def_property("warn_on_empty", &memory_pool::get_warn_on_empty, &memory_pool::set_warn_on_empty)
        .def_property_readonly("_free_buffers", &memory_pool::free_buffers,
                               "Buffers on the free list now (diagnostics; not in the reference).")
        .def_property_readonly("_reused", &memory_pool::reused,
                               "Requests served from the free list so far (diagnostics).")
        .def_property_readonly("_empty_hits", &memory_pool::empty_hits,
                               "Requests that found the free list empty so far (diagnostics).");
}

} // namespace spead2::bindings
