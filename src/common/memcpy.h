// Payload copy functions.  The stream chooses one once (never per packet).
#pragma once

#include <cstddef>

namespace spead2
{

constexpr int MEMCPY_STD = 0;
constexpr int MEMCPY_NONTEMPORAL = 1;

using memcpy_function = void *(*)(void *dest, const void *src, std::size_t n) noexcept;

/// Copy with non-temporal (cache-bypassing) stores: AVX2 when the CPU has it,
/// otherwise SSE2; small or unaligned edges use ordinary stores.
void *memcpy_nontemporal(void *dest, const void *src, std::size_t n) noexcept;

/// The same without the store fence at the end: the caller must call
/// store_fence() before another thread may read the destination.  For
/// streams that copy many packets into a buffer and hand it over once (a
/// fence per packet halved the rate of 1424-byte copies).
void *memcpy_nontemporal_unfenced(void *dest, const void *src, std::size_t n) noexcept;

/// Make the calling thread's non-temporal stores visible to other threads
/// before what follows (sfence on x86).
void store_fence() noexcept;

/// From this many bytes on, memcpy_std is the C library's memcpy (which
/// streams its source well by itself; see memcpy.cpp).  Readers that
/// prefetch packets skip those of this size or more (transport/reader.h).
constexpr std::size_t MEMCPY_STD_LIBC_MIN = 4096;

/// The regular copy (MEMCPY_STD): memcpy's result, with ordinary (cached)
/// stores; with AVX2, copies from 256 up to MEMCPY_STD_LIBC_MIN bytes align
/// their stores to the destination's cache lines (see memcpy.cpp).
void *memcpy_std(void *dest, const void *src, std::size_t n) noexcept;

/// Map a MEMCPY_* id to its function; throws std::invalid_argument for others.
/// With @a caller_fences the non-temporal copy is memcpy_nontemporal_unfenced.
memcpy_function memcpy_by_id(int id, bool caller_fences = false);

} // namespace spead2
