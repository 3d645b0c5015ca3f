// Gather mode of the send path: packet_generator::next_packet_parts gives the
// same packets as next_packet (header in the caller's buffer, payload as
// pieces that point into the items' own memory), and a stream constructed in
// gather mode hands transmit_gathered exactly those packets, with each
// substream, in the order the copy path would send them.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "send/heap.h"
#include "send/stream.h"

#include "check.h"

using namespace spead2::send;

namespace
{

/// Records both paths: flat packets (transmit) and gathered ones, flattened.
class recording_stream : public stream
{
public:
    std::vector<std::vector<std::uint8_t>> packets;
    std::vector<std::size_t> subs;
    bool pieces_point_into_items = true;
    const std::uint8_t *items_begin = nullptr, *items_end = nullptr;

    recording_stream(const stream_config &config, bool gather) : stream(config, gather) {}
    std::size_t num_substreams() const override { return 3; }
protected:
    void transmit(const std::uint8_t *d, const std::size_t *sizes, const std::size_t *s, std::size_t n) override
    {
        for (std::size_t i = 0; i < n; i++)
        {
            packets.emplace_back(d, d + sizes[i]);
            subs.push_back(s[i]);
            d += sizes[i];
        }
    }
    void transmit_gathered(const iovec *iov, const gathered_packet *p, std::size_t n) override
    {
        for (std::size_t i = 0; i < n; i++)
        {
            std::vector<std::uint8_t> flat;
            for (std::size_t j = 0; j < p[i].n_iov; j++)
            {
                const auto *b = static_cast<const std::uint8_t *>(iov[p[i].first + j].iov_base);
                if (j > 0 && (b < items_begin || b + iov[p[i].first + j].iov_len > items_end)
                    && iov[p[i].first + j].iov_len != 1)   // the padding byte of an empty heap
                    pieces_point_into_items = false;
                flat.insert(flat.end(), b, b + iov[p[i].first + j].iov_len);
            }
            CHECK(flat.size() == p[i].size);
            packets.push_back(flat);
            subs.push_back(p[i].substream);
        }
    }
};

} // anonymous namespace

int main()
{
    std::mt19937 rng(1);
    std::vector<std::uint8_t> memory(1 << 20);
    for (auto &b : memory)
        b = std::uint8_t(rng());
    for (int trial = 0; trial < 200; trial++)
    {
        const std::size_t max_packet = 64 + rng() % 9000;
        const int n_heaps = 1 + int(rng() % 4);
        std::vector<heap> heaps;
        heaps.reserve(n_heaps);
        for (int h = 0; h < n_heaps; h++)
        {
            heaps.emplace_back(48);
            heaps.back().set_repeat_pointers(rng() % 4 == 0);
            const int n_items = int(rng() % 5);
            for (int i = 0; i < n_items; i++)
            {
                if (rng() % 3 == 0)
                    heaps.back().add_immediate(0x1000 + i, rng() % 1000);
                else
                {
                    const std::size_t size = rng() % 20000;
                    const std::size_t start = rng() % (memory.size() - size);
                    heaps.back().add_item(0x1000 + i, memory.data() + start, size);
                }
            }
        }
        // packet_generator: parts == copy.
        for (const auto &h : heaps)
        {
            try
            {
                packet_generator a(h, 5, max_packet), b(h, 5, max_packet);
                std::vector<std::uint8_t> flat(max_packet), header(max_packet);
                std::vector<iovec> pieces;
                while (a.has_next())
                {
                    CHECK(b.has_next());
                    const std::size_t n = a.next_packet(flat.data());
                    pieces.clear();
                    const std::size_t hn = b.next_packet_parts(header.data(), pieces);
                    std::vector<std::uint8_t> joined(header.begin(), header.begin() + std::ptrdiff_t(hn));
                    for (const auto &p : pieces)
                        joined.insert(joined.end(), static_cast<const std::uint8_t *>(p.iov_base),
                                      static_cast<const std::uint8_t *>(p.iov_base) + p.iov_len);
                    CHECK(joined.size() == n);
                    CHECK(std::memcmp(joined.data(), flat.data(), n) == 0);
                }
                CHECK(!b.has_next());
            }
            catch (std::invalid_argument &)
            {
                // repeat_pointers that do not fit this packet size: same for both paths
            }
        }
        // A stream in each mode: the same packets, substreams and order.
        std::vector<heap_reference> refs(heaps.size());
        for (std::size_t i = 0; i < heaps.size(); i++)
        {
            refs[i].h = &heaps[i];
            refs[i].substream_index = rng() % 3;
        }
        stream_config config;
        config.set_max_packet_size(std::max<std::size_t>(max_packet, MIN_PACKET_SIZE)).set_max_heaps(8);
        recording_stream copy(config, false), gathered(config, true);
        gathered.items_begin = memory.data();
        gathered.items_end = memory.data() + memory.size();
        const group_mode mode = rng() % 2 ? group_mode::round_robin : group_mode::serial;
        std::size_t sent_copy = 0, sent_gathered = 0;
        bool copy_failed = false, gathered_failed = false;
        try
        {
            sent_copy = copy.send_heaps(refs.data(), refs.size(), mode);
        }
        catch (std::invalid_argument &)
        {
            copy_failed = true;
        }
        try
        {
            sent_gathered = gathered.send_heaps(refs.data(), refs.size(), mode);
        }
        catch (std::invalid_argument &)
        {
            gathered_failed = true;
        }
        CHECK(copy_failed == gathered_failed);
        CHECK(sent_copy == sent_gathered);
        CHECK(copy.packets == gathered.packets);
        CHECK(copy.subs == gathered.subs);
        CHECK(gathered.pieces_point_into_items);
    }
    return check_result("test_send_gather");
}
