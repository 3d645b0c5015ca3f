// The payload copy functions of src/common/memcpy.h: every destination
// alignment within a cache line, every length up to a few lines and some
// packet-sized ones, for the standard, the fenced and the unfenced
// non-temporal copies.  The copy must
// equal memcpy's and touch nothing outside [dest, dest + n).
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "common/memcpy.h"

#include "check.h"

int main()
{
    const spead2::memcpy_function functions[] = {
        spead2::memcpy_by_id(spead2::MEMCPY_STD),
        spead2::memcpy_by_id(spead2::MEMCPY_NONTEMPORAL),
        spead2::memcpy_by_id(spead2::MEMCPY_NONTEMPORAL, true),
    };
    constexpr std::size_t GUARD = 128;
    std::vector<std::uint8_t> src(8300), dst(8300 + 64 + 2 * GUARD);
    for (std::size_t i = 0; i < src.size(); i++)
        src[i] = std::uint8_t(i * 7 + 3);
    // Line-align the destination buffer's usable part.
    std::uint8_t *base = dst.data() + GUARD;
    base += (64 - (std::uintptr_t(base) & 63)) & 63;
    // Every size up to 140, then a spread, plus both sides of the switches
    // between copy routines (256 and 4096 bytes).
    std::vector<std::size_t> sizes;
    for (std::size_t n = 0; n <= 8200; n += (n < 140 ? 1 : n < 520 ? 37 : 1127))
        sizes.push_back(n);
    for (std::size_t n : {255, 256, 257, 4095, 4096, 4097, 8192})
        sizes.push_back(n);
    for (auto copy : functions)
        for (std::size_t align = 0; align < 64; align++)
            for (std::size_t n : sizes)
                for (std::size_t src_off : {std::size_t(0), std::size_t(5)})
                {
                    std::memset(dst.data(), 0xAA, dst.size());
                    std::uint8_t *d = base + align;
                    void *ret = copy(d, src.data() + src_off, n);
                    spead2::store_fence();
                    CHECK(ret == d);
                    CHECK(std::memcmp(d, src.data() + src_off, n) == 0);
                    bool outside_ok = true;
                    for (std::uint8_t *p = dst.data(); p < dst.data() + dst.size(); p++)
                        if ((p < d || p >= d + n) && *p != 0xAA)
                            outside_ok = false;
                    CHECK(outside_ok);
                }
    bool threw = false;
    try
    {
        spead2::memcpy_by_id(7);
    }
    catch (std::invalid_argument &)
    {
        threw = true;
    }
    CHECK(threw);
    return check_result("test_memcpy");
}
