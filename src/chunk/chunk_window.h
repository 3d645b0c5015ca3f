// The chunk window: the chunks [head, tail) that are under construction.
//
// A window holds at most max_chunks chunk pointers, stored at id modulo a
// power of two >= max_chunks.
// It does not decide where chunks come from or where they go: every
// operation that moves it takes three callables,
//   alloc(id) -> chunk *        a chunk for a new tail ID (may be nullptr),
//   ready(chunk *)              a chunk leaves at the head (never nullptr),
//   moved(new_head)             the head has advanced.
// A chunk stream passes its allocate/ready callbacks; a member of a chunk
// stream group borrows chunks from the group window and reports each head
// movement to the group, which then releases what every member has left.
//
// Not thread-safe: the owner serialises access (stream lock, group mutex).
// Chunks leave the window only after store_fence(): the streams copy payload
// with unfenced non-temporal stores (MEMCPY_NONTEMPORAL), which must be
// visible before another thread (the consumer, or the group releasing the
// chunk) can see the chunk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "chunk/config.h"
#include "common/memcpy.h"

namespace spead2::chunk
{

class chunk_window
{
    // Slots for IDs [head, tail) at id & mask: a power of two at least
    // max_chunks, so that finding a chunk (once per heap) needs no division.
    std::size_t max;
    std::vector<chunk *> slots;
    std::uint64_t mask;
    std::uint64_t head = 0;
    std::uint64_t tail = 0;

    static std::size_t slot_count(std::size_t max_chunks)
    {
        if (max_chunks > std::numeric_limits<std::size_t>::max() / 2)
            throw std::length_error("max_chunks is too large");
        std::size_t n = 1;
        while (n < max_chunks)
            n <<= 1;
        return n;
    }

    chunk *&slot(std::uint64_t id) { return slots[id & mask]; }

public:
    /// Past every chunk ID: the head of a window that has been flushed for good.
    static constexpr std::uint64_t END = std::numeric_limits<std::uint64_t>::max();

    explicit chunk_window(std::size_t max_chunks)
        : max(max_chunks), slots(slot_count(max_chunks), nullptr), mask(slots.size() - 1) {}
    chunk_window(const chunk_window &) = delete;
    chunk_window &operator=(const chunk_window &) = delete;

    std::size_t max_chunks() const { return max; }
    std::uint64_t get_head() const { return head; }
    std::uint64_t get_tail() const { return tail; }
    bool empty() const { return head == tail; }

    /// The chunk with this ID if it is in the window (it may be nullptr if
    /// allocation failed), else nullptr.
    chunk *get(std::uint64_t id) const
    {
        if (id < head || id >= tail)
            return nullptr;
        return slots[id & mask];
    }

    /// Release the oldest chunk (the window must not be empty).
    template<typename Ready, typename Moved>
    void flush_head(const Ready &ready, const Moved &moved)
    {
        store_fence();
        chunk *c = slot(head);
        slot(head) = nullptr;
        head++;
        if (c)
            ready(c);
        moved(head);
    }

    /// Release chunks until the head is at least @a target; a head that
    /// passes the tail drags the tail along.  @a moved runs once at the end
    /// if the head moved.
    template<typename Ready, typename Moved>
    void flush_until(std::uint64_t target, const Ready &ready, const Moved &moved)
    {
        if (head >= target)
            return;
        store_fence();
        while (head < tail && head < target)
        {
            chunk *c = slot(head);
            slot(head) = nullptr;
            head++;
            if (c)
                ready(c);
        }
        if (head < target)
            head = tail = target;
        moved(head);
    }

    /// Make @a id part of the window (id >= head), allocating every chunk
    /// from the current tail up to @a id and releasing old chunks to make
    /// room.  After a jump of more than a window, every chunk in the window
    /// is released and the window restarts at id - max_chunks + 1 (the
    /// chunks in between are still allocated: "back-fill").
    template<typename Alloc, typename Ready, typename Moved>
    void extend_to(std::uint64_t id, std::uintptr_t stream_id,
                   const Alloc &alloc, const Ready &ready, const Moved &moved)
    {
        if (id >= tail && id - tail >= max)
        {
            const std::uint64_t restart = id - (max - 1);
            const std::uint64_t old_head = head;
            store_fence();
            while (head < tail)
            {
                chunk *c = slot(head);
                slot(head) = nullptr;
                head++;
                if (c)
                    ready(c);
            }
            head = tail = restart;
            if (head != old_head)
                moved(head);
        }
        while (id >= tail)
        {
            if (tail - head == max)
                flush_head(ready, moved);
            chunk *c = alloc(tail);
            if (c)
            {
                c->chunk_id = std::int64_t(tail);
                c->stream_id = stream_id;
                c->first_packet_time = chunk::NO_FIRST_PACKET_TIME;
                c->last_packet_time = -1;
            }
            slot(tail) = c;
            tail++;
        }
    }
};

} // namespace spead2::chunk
