#include "heap/mmap_allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <new>

namespace spead2::heap
{

namespace
{

constexpr std::size_t FALLBACK_HUGE_PAGE_SIZE = std::size_t(2) << 20;

std::size_t round_up(std::size_t size, std::size_t unit)
{
    return (size + unit - 1) / unit * unit;
}

std::size_t page_size()
{
    static const std::size_t size = std::size_t(sysconf(_SC_PAGESIZE));
    return size;
}

} // anonymous namespace

std::size_t default_huge_page_size()
{
    static const std::size_t size = [] {
        std::size_t kib = 0;
        if (std::FILE *f = std::fopen("/proc/meminfo", "r"))
        {
            char line[128];
            while (std::fgets(line, sizeof(line), f))
                if (std::sscanf(line, "Hugepagesize: %zu kB", &kib) == 1)
                    break;
            std::fclose(f);
        }
        return kib ? kib * 1024 : FALLBACK_HUGE_PAGE_SIZE;
    }();
    return size;
}

mmap_allocator::mmap_allocator(int flags_, bool prefer_huge_)
    : flags(flags_), prefer_huge(prefer_huge_),
      huge_page_size(prefer_huge_ ? default_huge_page_size() : 0)
{
}

std::size_t mmap_allocator::mapped_length(std::size_t size) const
{
    // With prefer_huge every allocation is rounded to whole huge pages, also
    // when the huge-page mapping fails and ordinary pages are used instead:
    // deallocate() cannot tell which happened, so both must unmap the same
    // length.
    return round_up(size, prefer_huge ? huge_page_size : page_size());
}

std::uint8_t *mmap_allocator::allocate(std::size_t size)
{
    const std::size_t length = mapped_length(size);
    const int base = MAP_PRIVATE | MAP_ANONYMOUS | flags;
    void *ptr = MAP_FAILED;
    if (prefer_huge)
        ptr = mmap(nullptr, length, PROT_READ | PROT_WRITE, base | MAP_HUGETLB, -1, 0);
    if (ptr == MAP_FAILED)
    {
        ptr = mmap(nullptr, length, PROT_READ | PROT_WRITE, base, -1, 0);
        if (ptr == MAP_FAILED)
            throw std::bad_alloc();
        if (prefer_huge)
            madvise(ptr, length, MADV_HUGEPAGE);   // transparent huge pages, if enabled
    }
    return static_cast<std::uint8_t *>(ptr);
}

void mmap_allocator::deallocate(std::uint8_t *ptr, std::size_t size) noexcept
{
    munmap(ptr, mapped_length(size));
}

} // namespace spead2::heap
