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

/// Standard memcpy, as a function pointer of the same type.
void *memcpy_std(void *dest, const void *src, std::size_t n) noexcept;

/// Map a MEMCPY_* id to its function; throws std::invalid_argument for others.
memcpy_function memcpy_by_id(int id);

} // namespace spead2
