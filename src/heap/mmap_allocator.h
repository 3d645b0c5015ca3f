// An allocator that maps anonymous memory for each allocation (the
// reference's MmapAllocator): every payload starts on a page boundary, extra
// mmap flags (MAP_POPULATE, MAP_LOCKED, ...) can be asked for, and with
// prefer_huge the mapping is made of huge pages where the system has them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "heap/memory.h"

namespace spead2::heap
{

class mmap_allocator : public memory_allocator
{
    int flags;
    bool prefer_huge;
    std::size_t huge_page_size;   ///< 0 unless prefer_huge

    /// Bytes actually mapped for an allocation of @a size (also what is unmapped).
    std::size_t mapped_length(std::size_t size) const;

public:
    /// @a flags are OR'd into MAP_PRIVATE | MAP_ANONYMOUS.
    explicit mmap_allocator(int flags = 0, bool prefer_huge = false);

    /// Throws std::bad_alloc when mmap fails.
    std::uint8_t *allocate(std::size_t size) override;
    void deallocate(std::uint8_t *ptr, std::size_t size) noexcept override;
};

/// The system's default huge page size (Hugepagesize in /proc/meminfo; 2 MiB
/// if that cannot be read).
std::size_t default_huge_page_size();

} // namespace spead2::heap
