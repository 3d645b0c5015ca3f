// Unit tests of the chunk core's parts, each on its own: the chunk window,
// the received-range set and the live-heap table.  Built with
// -DSPEAD2_CPP_TESTS=ON and run by ctest (scripts/test.sh does both).
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <memory>
#include <vector>

#include "chunk/chunk_window.h"
#include "chunk/heap_table.h"
#include "chunk/range_set.h"

#include "check.h"

using namespace spead2::chunk;



namespace
{

struct window_log
{
    std::vector<std::unique_ptr<chunk>> made;
    std::vector<std::int64_t> allocated, released;
    std::vector<std::uint64_t> heads;

    auto alloc()
    {
        return [this](std::uint64_t id) {
            allocated.push_back(std::int64_t(id));
            made.push_back(std::make_unique<chunk>());
            return made.back().get();
        };
    }
    auto ready() { return [this](chunk *c) { released.push_back(c->chunk_id); }; }
    auto moved() { return [this](std::uint64_t h) { heads.push_back(h); }; }
};

void test_window_backfill_and_jump()
{
    // The reference's test_jump: max_chunks 4, heaps of chunks 10 then 20
    // give chunks 7-10 then 17-20 (back-filled), 7-10 released on the jump.
    chunk_window w(4);
    window_log log;
    w.extend_to(10, 5, log.alloc(), log.ready(), log.moved());
    CHECK((log.allocated == std::vector<std::int64_t>{7, 8, 9, 10}));
    CHECK(w.get_head() == 7 && w.get_tail() == 11);
    CHECK(w.get(8) && w.get(8)->chunk_id == 8 && w.get(8)->stream_id == 5);
    CHECK(w.get(6) == nullptr && w.get(11) == nullptr);
    w.extend_to(20, 5, log.alloc(), log.ready(), log.moved());
    CHECK((log.released == std::vector<std::int64_t>{7, 8, 9, 10}));
    CHECK((log.allocated == std::vector<std::int64_t>{7, 8, 9, 10, 17, 18, 19, 20}));
    CHECK(w.get_head() == 17);
    // A step of one releases the head only.
    w.extend_to(21, 5, log.alloc(), log.ready(), log.moved());
    CHECK(log.released.back() == 17 && w.get_head() == 18 && log.heads.back() == 18);
}

void test_window_flush_until()
{
    chunk_window w(3);
    window_log log;
    w.extend_to(2, 0, log.alloc(), log.ready(), log.moved());   // 0, 1, 2
    w.flush_until(1, log.ready(), log.moved());
    CHECK((log.released == std::vector<std::int64_t>{0}) && w.get_head() == 1);
    w.flush_until(1, log.ready(), log.moved());                  // no-op
    CHECK(log.heads.size() == 1);
    w.flush_until(10, log.ready(), log.moved());                 // past the tail: drags it
    CHECK((log.released == std::vector<std::int64_t>{0, 1, 2}));
    CHECK(w.get_head() == 10 && w.get_tail() == 10 && w.empty() && log.heads.back() == 10);
    w.flush_until(chunk_window::END, log.ready(), log.moved());
    CHECK(w.get_head() == chunk_window::END && w.get(5) == nullptr);
}

void test_window_null_chunks()
{
    // An allocation that fails leaves a hole: nothing to release for it.
    chunk_window w(2);
    std::vector<std::int64_t> released;
    w.extend_to(1, 0, [](std::uint64_t) { return static_cast<chunk *>(nullptr); },
                [&](chunk *c) { released.push_back(c->chunk_id); }, [](std::uint64_t) {});
    CHECK(w.get(0) == nullptr && w.get_tail() == 2);
    w.flush_until(chunk_window::END, [&](chunk *c) { released.push_back(c->chunk_id); }, [](std::uint64_t) {});
    CHECK(released.empty());
}

void test_window_large_ids()
{
    chunk_window w(4);
    window_log log;
    const std::uint64_t top = (std::uint64_t(1) << 63) - 1;
    w.extend_to(top, 0, log.alloc(), log.ready(), log.moved());
    CHECK(w.get_head() == top - 3 && w.get_tail() == top + 1 && w.get(top)->chunk_id == std::int64_t(top));
}

void test_window_sizes()
{
    // Slots are a power of two >= max_chunks: a window of 3, 5 or 6 chunks
    // must still hold exactly that many, each findable by its own ID, while
    // it slides over many multiples of its slot count.
    for (std::size_t max : {std::size_t(1), std::size_t(3), std::size_t(5), std::size_t(6), std::size_t(8)})
    {
        chunk_window w(max);
        window_log log;
        CHECK(w.max_chunks() == max);
        for (std::uint64_t id = 0; id < 40; id++)
        {
            w.extend_to(id, 0, log.alloc(), log.ready(), log.moved());
            CHECK(w.get_tail() == id + 1 && w.get_tail() - w.get_head() == std::min<std::uint64_t>(id + 1, max));
            for (std::uint64_t k = w.get_head(); k < w.get_tail(); k++)
                CHECK(w.get(k) != nullptr && w.get(k)->chunk_id == std::int64_t(k));
            CHECK(w.get(w.get_tail()) == nullptr);
            if (w.get_head() > 0)
                CHECK(w.get(w.get_head() - 1) == nullptr);
        }
        // Released in ID order, each once.
        for (std::size_t i = 0; i < log.released.size(); i++)
            CHECK(log.released[i] == std::int64_t(i));
        CHECK(log.released.size() == 40 - max);
    }
    bool threw = false;
    try
    {
        chunk_window w(std::numeric_limits<std::size_t>::max() / 2 + 2);
    }
    catch (std::length_error &)
    {
        threw = true;
    }
    CHECK(threw);
}

void test_range_set()
{
    using r = range_set::result;
    range_set s;
    CHECK(s.insert(10, 20) == r::added);
    CHECK(s.insert(10, 20) == r::duplicate);
    CHECK(s.insert(15, 25) == r::overlap);
    CHECK(s.insert(5, 11) == r::overlap);
    CHECK(s.insert(0, 5) == r::added);
    CHECK(s.size() == 2);
    CHECK(s.insert(5, 10) == r::added);          // joins both neighbours
    CHECK(s.size() == 1 && s[0].first == 0 && s[0].second == 20);
    CHECK(s.insert(30, 40) == r::added);
    CHECK(s.insert(20, 30) == r::added);
    CHECK(s.size() == 1 && s[0].second == 40);
    CHECK(s.insert(0, 40) == r::duplicate);
    CHECK(s.insert(39, 41) == r::overlap);
}

void test_heap_table()
{
    heap_table t(2, 3);   // 2 heaps per substream, 3 substreams
    CHECK(t.size() == 6);
    std::uint64_t dist = 0;
    CHECK(t.find(7, dist) == -1 && dist == 1);   // a miss on an empty chain costs 1
    // Heaps 0, 3, 6 share substream 0: the third evicts the first (FIFO).
    std::size_t s0 = t.next_slot(0);
    t[s0].cnt = 0;
    t.link(s0);
    std::size_t s3 = t.next_slot(3);
    t[s3].cnt = 3;
    t.link(s3);
    CHECK(s0 != s3 && s0 / 2 == 0 && s3 / 2 == 0);
    std::size_t s6 = t.next_slot(6);
    CHECK(s6 == s0);                      // the oldest slot comes round again
    dist = 0;
    CHECK(t.find(0, dist) == std::int32_t(s0) && dist >= 1);
    t.unlink(s0);
    CHECK(t[s0].cnt == -1);
    dist = 0;
    CHECK(t.find(0, dist) == -1);
    CHECK(t.find(3, dist) == std::int32_t(s3));
    // Substream 1 is independent.
    std::size_t s1 = t.next_slot(1);
    CHECK(s1 / 2 == 1);
    t[s1].cnt = 1;
    t.link(s1);
    std::vector<std::size_t> order;
    t.for_each_live([&](std::size_t slot) { order.push_back(slot); });
    CHECK((order == std::vector<std::size_t>{s3, s1}));
    // Many heaps in one bucket chain stay findable.
    heap_table big(64, 1);
    for (std::int64_t cnt = 0; cnt < 64; cnt++)
    {
        std::size_t s = big.next_slot(cnt);
        big[s].cnt = cnt * 1024;
        big.link(s);
    }
    for (std::int64_t cnt = 0; cnt < 64; cnt++)
        CHECK(big.find(cnt * 1024, dist) >= 0);
}

} // anonymous namespace

int main()
{
    test_window_backfill_and_jump();
    test_window_flush_until();
    test_window_null_chunks();
    test_window_large_ids();
    test_window_sizes();
    test_range_set();
    test_heap_table();
    return check_result("test_chunk_parts");
}
