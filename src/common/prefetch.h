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

/// Call @a line for the address of every cache line of [p, p + size), four
/// lines per loop iteration (a 1 KiB payload spans 16 or 17 lines, and the
/// loop overhead of one line per iteration was 60 % of the prefetch's
/// instructions).
template<typename Line>
inline void for_each_line(const void *p, std::size_t size, Line &&line)
{
    if (size == 0)
        return;
    const auto *c = static_cast<const std::uint8_t *>(p);
    auto a = std::uintptr_t(c) & ~std::uintptr_t(CACHE_LINE_SIZE - 1);
    std::size_t lines = (std::uintptr_t(c + size - 1) - a) / CACHE_LINE_SIZE + 1;
    for (; lines >= 4; lines -= 4, a += 4 * CACHE_LINE_SIZE)
    {
        line(a);
        line(a + CACHE_LINE_SIZE);
        line(a + 2 * CACHE_LINE_SIZE);
        line(a + 3 * CACHE_LINE_SIZE);
    }
    for (; lines > 0; lines--, a += CACHE_LINE_SIZE)
        line(a);
}

/// Prefetch every cache line of [p, p + size).
inline void prefetch_range(const void *p, std::size_t size)
{
    for_each_line(p, size, [](std::uintptr_t a) { prefetch_line(reinterpret_cast<const void *>(a)); });
}

/// Prefetch every cache line of [p, p + size) with intent to write.
inline void prefetch_range_write(const void *p, std::size_t size)
{
    for_each_line(p, size, [](std::uintptr_t a) { prefetch_line_write(reinterpret_cast<const void *>(a)); });
}

} // namespace spead2
