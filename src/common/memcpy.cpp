#include "common/memcpy.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#define SPEAD2_X86 1
#endif

namespace spead2
{

void *memcpy_std(void *dest, const void *src, std::size_t n) noexcept
{
    return std::memcpy(dest, src, n);
}

#if SPEAD2_X86
namespace
{

// Copy the unaligned head so that the destination becomes 'align'-aligned;
// returns the number of bytes handled.
std::size_t copy_head(std::uint8_t *d, const std::uint8_t *s, std::size_t n, std::size_t align)
{
    std::size_t head = (align - (std::uintptr_t(d) & (align - 1))) & (align - 1);
    if (head > n)
        head = n;
    std::memcpy(d, s, head);
    return head;
}

__attribute__((target("avx2")))
void copy_nt_avx2(std::uint8_t *d, const std::uint8_t *s, std::size_t n)
{
    std::size_t done = copy_head(d, s, n, 32);
    for (; done + 128 <= n; done += 128)
    {
        __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done));
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 32));
        __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 64));
        __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done + 96));
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d + done), a);
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d + done + 32), b);
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d + done + 64), c);
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d + done + 96), e);
    }
    for (; done + 32 <= n; done += 32)
        _mm256_stream_si256(reinterpret_cast<__m256i *>(d + done),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i *>(s + done)));
    _mm_sfence();
    std::memcpy(d + done, s + done, n - done);
}

void copy_nt_sse2(std::uint8_t *d, const std::uint8_t *s, std::size_t n)
{
    std::size_t done = copy_head(d, s, n, 16);
    for (; done + 16 <= n; done += 16)
        _mm_stream_si128(reinterpret_cast<__m128i *>(d + done),
                         _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + done)));
    _mm_sfence();
    std::memcpy(d + done, s + done, n - done);
}

const bool have_avx2 = __builtin_cpu_supports("avx2");

} // anonymous namespace
#endif

void *memcpy_nontemporal(void *dest, const void *src, std::size_t n) noexcept
{
#if SPEAD2_X86
    auto *d = static_cast<std::uint8_t *>(dest);
    auto *s = static_cast<const std::uint8_t *>(src);
    if (have_avx2)
        copy_nt_avx2(d, s, n);
    else
        copy_nt_sse2(d, s, n);
    return dest;
#else
    return std::memcpy(dest, src, n);
#endif
}

memcpy_function memcpy_by_id(int id)
{
    switch (id)
    {
    case MEMCPY_STD: return memcpy_std;
    case MEMCPY_NONTEMPORAL: return memcpy_nontemporal;
    default: throw std::invalid_argument("Unknown memcpy function " + std::to_string(id));
    }
}

} // namespace spead2
