#include "heap/heap.h"

#include <algorithm>
#include <new>

#include "protocol/spead.h"

namespace spead2::heap
{

std::shared_ptr<memory_allocator> get_default_allocator()
{
    static std::shared_ptr<memory_allocator> instance = std::make_shared<default_allocator>();
    return instance;
}

void payload_buffer::reserve(const std::shared_ptr<memory_allocator> &alloc, std::size_t size, bool exact)
{
    if (size <= capacity_)
        return;
    std::size_t want = exact ? size : std::max(size, capacity_ * 2);
    std::uint8_t *fresh = alloc->allocate(want);
    if (ptr)
        std::copy(ptr, ptr + capacity_, fresh);   // out-of-order packets: not only a prefix
    reset();
    owner = alloc;
    ptr = fresh;
    capacity_ = want;
}

bool received_heap::start_of_stream() const
{
    for (std::uint64_t raw : pointers)
    {
        auto p = protocol::decode_item_pointer(raw, heap_address_bits);
        if (p.immediate && p.id == protocol::STREAM_CTRL_ID && p.value == protocol::CTRL_STREAM_START)
            return true;
    }
    return false;
}

std::vector<heap_item> received_heap::items(bool descriptors) const
{
    std::vector<heap_item> addressed, immediates;
    const std::size_t imm_bytes = std::size_t(heap_address_bits / 8);
    for (std::uint64_t raw : pointers)
    {
        auto p = protocol::decode_item_pointer(raw, heap_address_bits);
        if (p.immediate)
        {
            if (p.id != protocol::NULL_ID && p.id != protocol::DESCRIPTOR_ID && !descriptors)
                immediates.push_back(heap_item{p.id, true, p.value, nullptr, imm_bytes});
        }
        else if (contiguous)
            addressed.push_back(heap_item{p.id, false, p.value, nullptr, 0});
    }
    // As the reference: each kind sorted by value (stable, so ties keep
    // their arrival order); an addressed item runs to the next one's address,
    // so of several at one address only the last keeps the bytes, and
    // zero-length items are left out.
    const auto by_value = [](const heap_item &a, const heap_item &b) { return a.value < b.value; };
    std::stable_sort(addressed.begin(), addressed.end(), by_value);
    std::stable_sort(immediates.begin(), immediates.end(), by_value);
    const std::uint64_t total = min_length;
    std::vector<heap_item> out;
    for (std::size_t i = 0; i < addressed.size(); i++)
    {
        heap_item &it = addressed[i];
        const std::uint64_t end = i + 1 < addressed.size() ? addressed[i + 1].value : total;
        if (end <= it.value || it.id == protocol::NULL_ID
            || (it.id == protocol::DESCRIPTOR_ID) != descriptors)
            continue;
        it.data = payload.data() ? payload.data() + it.value : nullptr;
        it.length = std::size_t(end - it.value);
        out.push_back(it);
    }
    out.insert(out.end(), immediates.begin(), immediates.end());
    return out;
}

} // namespace spead2::heap
