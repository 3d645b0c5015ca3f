// Software prefetch that the optimiser keeps.
//
// GCC treats __builtin_prefetch as free of side effects and deletes a loop
// that contains nothing else once it can prove the loop finite (GCC 12 removed
// the whole-packet prefetch of the buffer and pcap readers that way; see
// tests/test_codegen.py).  An asm volatile statement cannot be deleted.
#pragma once

#include <cstddef>
#include <cstdint>

namespace spead2
{

constexpr std::size_t CACHE_LINE_SIZE = 64;

/// Prefetch the cache line holding @a p into all cache levels.  Never faults.
inline void prefetch_line(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char *>(p)));
#elif defined(__aarch64__)
    asm volatile("prfm pldl1keep, %0" : : "Q"(*static_cast<const char *>(p)));
#else
    __builtin_prefetch(p);
#endif
}

/// Prefetch the cache line holding @a p with intent to write (so a later
/// store does not wait for the line).  Never faults.
inline void prefetch_line_write(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("prefetchw %0" : : "m"(*static_cast<const char *>(p)));
#elif defined(__aarch64__)
    asm volatile("prfm pstl1keep, %0" : : "Q"(*static_cast<const char *>(p)));
#else
    __builtin_prefetch(p, 1);
#endif
}

/// Prefetch every cache line of [p, p + size).
inline void prefetch_range(const void *p, std::size_t size)
{
    const auto *c = static_cast<const std::uint8_t *>(p);
    const auto first = std::uintptr_t(c) & ~std::uintptr_t(CACHE_LINE_SIZE - 1);
    const auto last = std::uintptr_t(c + size - 1);
    if (size == 0)
        return;
    for (std::uintptr_t a = first; a <= last; a += CACHE_LINE_SIZE)
        prefetch_line(reinterpret_cast<const void *>(a));
}

/// Prefetch every cache line of [p, p + size) with intent to write.
inline void prefetch_range_write(const void *p, std::size_t size)
{
    const auto *c = static_cast<const std::uint8_t *>(p);
    const auto first = std::uintptr_t(c) & ~std::uintptr_t(CACHE_LINE_SIZE - 1);
    const auto last = std::uintptr_t(c + size - 1);
    if (size == 0)
        return;
    for (std::uintptr_t a = first; a <= last; a += CACHE_LINE_SIZE)
        prefetch_line_write(reinterpret_cast<const void *>(a));
}

} // namespace spead2
