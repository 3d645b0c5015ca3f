// Where heap payloads live.  A payload_buffer owns bytes obtained from a
// memory_allocator; the default allocator uses operator new.  Allocators are
// shared (a pool outlives the heaps it handed out through shared_ptr).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace spead2::heap
{

class memory_allocator : public std::enable_shared_from_this<memory_allocator>
{
public:
    virtual ~memory_allocator() = default;
    /// @a size bytes (size > 0); throws std::bad_alloc on failure.
    virtual std::uint8_t *allocate(std::size_t size) = 0;
    virtual void deallocate(std::uint8_t *ptr, std::size_t size) noexcept = 0;
};

/// operator new / delete.
class default_allocator : public memory_allocator
{
public:
    std::uint8_t *allocate(std::size_t size) override { return new std::uint8_t[size]; }
    void deallocate(std::uint8_t *ptr, std::size_t) noexcept override { delete[] ptr; }
};

std::shared_ptr<memory_allocator> get_default_allocator();

class payload_buffer
{
    std::shared_ptr<memory_allocator> owner;
    std::uint8_t *ptr = nullptr;
    std::size_t capacity_ = 0;

public:
    payload_buffer() = default;
    payload_buffer(const payload_buffer &) = delete;
    payload_buffer &operator=(const payload_buffer &) = delete;
    payload_buffer(payload_buffer &&o) noexcept { swap(o); }
    payload_buffer &operator=(payload_buffer &&o) noexcept { reset(); swap(o); return *this; }
    ~payload_buffer() { reset(); }

    void swap(payload_buffer &o) noexcept
    {
        std::swap(owner, o.owner);
        std::swap(ptr, o.ptr);
        std::swap(capacity_, o.capacity_);
    }
    void reset() noexcept
    {
        if (ptr)
            owner->deallocate(ptr, capacity_);
        ptr = nullptr;
        capacity_ = 0;
        owner.reset();
    }
    std::uint8_t *data() const { return ptr; }
    std::size_t capacity() const { return capacity_; }

    /// Make room for @a size bytes, keeping the contents.  With @a exact the
    /// buffer gets exactly @a size bytes, else it at least doubles.
    void reserve(const std::shared_ptr<memory_allocator> &alloc, std::size_t size, bool exact);
};

} // namespace spead2::heap
