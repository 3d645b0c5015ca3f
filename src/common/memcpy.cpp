#include "common/memcpy.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#define SPEAD2_X86 1
#endif

namespace spead2
{

#if SPEAD2_X86
namespace
{

// Non-temporal stores only ever write whole cache lines: the partial lines at
// the head and the tail of the destination are written with ordinary stores.
// A line written partly by each kind would first be pulled into the cache by
// the ordinary store and then have to be evicted again by the streaming one
// (measured: 1424-byte copies into a cold 256 MiB ring at half the speed of
// plain memcpy when the head was only aligned to 32 bytes).
constexpr std::size_t CACHE_LINE = 64;

struct line_split
{
    std::size_t head;   ///< bytes before the first whole line
    std::size_t body;   ///< bytes of whole lines
};

line_split split_lines(const std::uint8_t *d, std::size_t n)
{
    std::size_t head = (CACHE_LINE - (std::uintptr_t(d) & (CACHE_LINE - 1))) & (CACHE_LINE - 1);
    if (head > n)
        head = n;
    return {head, (n - head) & ~(CACHE_LINE - 1)};
}

/// Store one 32-byte vector to a 32-byte aligned address, streaming or not.
template<bool Streaming>
__attribute__((target("avx2"), always_inline)) inline void store_vec(std::uint8_t *d, __m256i v)
{
    if constexpr (Streaming)
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d), v);
    else
        _mm256_store_si256(reinterpret_cast<__m256i *>(d), v);
}

/// Copy with AVX2: unaligned loads, and stores of whole destination cache
/// lines only (the partial lines at the head and the tail with memcpy),
/// 128 bytes per iteration.
template<bool Streaming>
__attribute__((target("avx2")))
void copy_lines_avx2(std::uint8_t *d, const std::uint8_t *s, std::size_t n)
{
    const line_split sp = split_lines(d, n);
    std::memcpy(d, s, sp.head);
    std::size_t done = sp.head;
    const std::size_t body_end = sp.head + sp.body;
    for (; done + 128 <= body_end; done += 128)
    {
        __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done));
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 32));
        __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 64));
        __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 96));
        store_vec<Streaming>(d + done, a);
        store_vec<Streaming>(d + done + 32, b);
        store_vec<Streaming>(d + done + 64, c);
        store_vec<Streaming>(d + done + 96, e);
    }
    for (; done < body_end; done += 64)
    {
        __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done));
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 32));
        store_vec<Streaming>(d + done, a);
        store_vec<Streaming>(d + done + 32, b);
    }
    std::memcpy(d + done, s + done, n - done);
}

// The regular (cached) copy of payloads from CACHED_COPY_MIN up to
// MEMCPY_STD_LIBC_MIN bytes is copy_lines_avx2<false>.  Payloads of 1424 bytes
// land 0, 16, 32 or 48 bytes past a line boundary in turn; glibc's memcpy
// then stores across lines, and this copy placed 64 KiB heaps of 1472-byte
// packets 5-12 % faster (bench_chunk.py, A/B of two builds on 2026-11-30).
// For 1 KiB payloads it is also the faster one (11.5 against 9.8 Mpkt/s in
// the receiver, 2026-12-01).
//
// From MEMCPY_STD_LIBC_MIN bytes on, glibc's memcpy is used: above its
// rep_movsb_threshold (2112 bytes on the AMD EPYC this was measured on) it
// copies with `rep movsb`, which the AVX2 loop does not match there.  8 KiB
// single-packet heaps from memory, each run beside a bare placement loop in
// the same process to cancel the VM's drift: the receiver reached 0.81-0.86
// of the bare AVX2 loop's rate with glibc against 0.76-0.78 with the AVX2
// loop (doc/benchmarking.rst).

void copy_nt_sse2(std::uint8_t *d, const std::uint8_t *s, std::size_t n)
{
    const line_split sp = split_lines(d, n);
    std::memcpy(d, s, sp.head);
    std::size_t done = sp.head;
    const std::size_t body_end = sp.head + sp.body;
    for (; done < body_end; done += 16)
        _mm_stream_si128(reinterpret_cast<__m128i *>(d + done),
                         _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + done)));
    std::memcpy(d + done, s + done, n - done);
}

const bool have_avx2 = __builtin_cpu_supports("avx2");

constexpr std::size_t CACHED_COPY_MIN = 256;

} // anonymous namespace
#endif

void *memcpy_std(void *dest, const void *src, std::size_t n) noexcept
{
#if SPEAD2_X86
    if (n >= CACHED_COPY_MIN && n < MEMCPY_STD_LIBC_MIN && have_avx2)
    {
        copy_lines_avx2<false>(static_cast<std::uint8_t *>(dest), static_cast<const std::uint8_t *>(src), n);
        return dest;
    }
#endif
    return std::memcpy(dest, src, n);
}

void *memcpy_nontemporal_unfenced(void *dest, const void *src, std::size_t n) noexcept
{
#if SPEAD2_X86
    auto *d = static_cast<std::uint8_t *>(dest);
    auto *s = static_cast<const std::uint8_t *>(src);
    if (have_avx2)
        copy_lines_avx2<true>(d, s, n);
    else
        copy_nt_sse2(d, s, n);
    return dest;
#else
    return std::memcpy(dest, src, n);
#endif
}

void store_fence() noexcept
{
#if SPEAD2_X86
    _mm_sfence();
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

void *memcpy_nontemporal(void *dest, const void *src, std::size_t n) noexcept
{
    memcpy_nontemporal_unfenced(dest, src, n);
    store_fence();
    return dest;
}

memcpy_function memcpy_by_id(int id, bool caller_fences)
{
    switch (id)
    {
    case MEMCPY_STD: return memcpy_std;
    case MEMCPY_NONTEMPORAL: return caller_fences ? memcpy_nontemporal_unfenced : memcpy_nontemporal;
    default: throw std::invalid_argument("Unknown memcpy function " + std::to_string(id));
    }
}

} // namespace spead2
