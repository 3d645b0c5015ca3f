// libFuzzer target for the packet decoder, the frame decoder and the chunk
// placement core fed with whatever the decoders accept.
//
// The first input byte chooses what the rest is:
//   0: one SPEAD packet (decode_packet / decode_datagram)
//   1-4: a frame of link type ethernet / SLL / SLL2 / raw IPv4
//   5+: a buffer of concatenated packets run through a chunk stream whose
//       place callback returns hostile placements taken from the input.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "chunk/chunk_stream.h"
#include "common/logging.h"
#include "protocol/frame.h"
#include "protocol/spead.h"

using namespace spead2;

namespace
{

constexpr std::size_t CHUNK_DATA = 4096;
constexpr std::size_t CHUNK_PRESENT = 8;
constexpr std::size_t CHUNK_EXTRA = 16;
constexpr std::size_t MAX_HEAP_EXTRA = 8;

struct guarded_chunk : chunk::chunk
{
    std::vector<std::uint8_t> storage;   // guard | data | guard | present | guard | extra | guard
    guarded_chunk() : storage(CHUNK_DATA + CHUNK_PRESENT + CHUNK_EXTRA + 4 * 64, 0xA5)
    {
        data = storage.data() + 64;
        data_size = CHUNK_DATA;
        present = data + CHUNK_DATA + 64;
        present_size = CHUNK_PRESENT;
        extra = present + CHUNK_PRESENT + 64;
        extra_size = CHUNK_EXTRA;
        std::memset(data, 0, CHUNK_DATA);
        std::memset(present, 0, CHUNK_PRESENT);
        std::memset(extra, 0, CHUNK_EXTRA);
    }
    void check_guards() const
    {
        const std::uint8_t *p = storage.data();
        auto guard_ok = [](const std::uint8_t *g) {
            for (int i = 0; i < 64; i++)
                if (g[i] != 0xA5)
                    return false;
            return true;
        };
        if (!guard_ok(p) || !guard_ok(data + CHUNK_DATA) || !guard_ok(present + CHUNK_PRESENT)
            || !guard_ok(extra + CHUNK_EXTRA))
            __builtin_trap();
    }
};

// Placement chosen from the packet's first payload bytes: hostile on purpose.
void hostile_place(void *raw, std::size_t)
{
    auto *d = static_cast<chunk::chunk_place_data *>(raw);
    std::uint64_t v[4] = {};
    std::memcpy(v, d->packet + d->packet_size - std::min<std::size_t>(d->packet_size, 32),
                std::min<std::size_t>(d->packet_size, 32));
    d->chunk_id = std::int64_t(v[0] % 8) - 1;
    d->heap_index = std::size_t(v[1] % 32);
    d->heap_offset = std::size_t(v[2] % (2 * CHUNK_DATA));
    d->extra_offset = std::size_t(v[3] % 32);
    d->extra_size = std::size_t((v[3] >> 8) % 16);
    if (d->extra)
        std::memset(d->extra, 0x5a, MAX_HEAP_EXTRA);
}

void run_stream(const std::uint8_t *data, std::size_t size, std::uint8_t flags)
{
    // One worker thread shared by all inputs: the stream gets no readers (the
    // packets are handed over on this thread), and a thread started per input
    // grew the process under ASAN by about 190 MB per million inputs (its
    // per-thread bookkeeping; flat without ASAN), which a long run would take
    // to libFuzzer's 2 GB RSS limit.
    static const auto pool = std::make_shared<thread_pool>(1);
    chunk::stream_config config;
    config.set_max_heaps(1 + flags % 4);
    config.set_allow_out_of_order(flags & 4);
    config.set_substreams(1 + ((flags >> 3) & 1));
    chunk::chunk_stream_config cc;
    cc.set_items({protocol::HEAP_CNT_ID, protocol::HEAP_LENGTH_ID, 0x1000});
    cc.set_max_chunks(1 + (flags >> 4) % 3);
    cc.set_max_heap_extra(MAX_HEAP_EXTRA);
    if (flags & 0x80)
        cc.enable_packet_presence(64);
    chunk::place_function f;
    f.type = chunk::place_function::kind::plain;
    f.fn = reinterpret_cast<void *>(&hostile_place);
    cc.set_place(f);
    std::vector<std::unique_ptr<guarded_chunk>> done;
    {
        chunk::chunk_stream stream(
            pool, config, cc,
            [](std::int64_t, std::uint64_t *) { return std::make_unique<guarded_chunk>(); },
            [&](std::unique_ptr<chunk::chunk> &&c, std::uint64_t *) {
                done.emplace_back(static_cast<guarded_chunk *>(c.release()));
            });
        // Decode as a concatenation, as the buffer reader does, but on this thread.
        std::vector<protocol::packet_header> packets;
        std::size_t pos = 0;
        while (pos < size)
        {
            protocol::packet_header ph;
            if (protocol::decode_packet(ph, data + pos, size - pos) != protocol::decode_status::ok)
                break;
            packets.push_back(ph);
            pos += ph.size;
        }
        if (stream.batch_begin())
        {
            stream.batch_packets(packets.data(), packets.size());
            stream.batch_end(true);
        }
        stream.stop();
    }
    for (auto &c : done)
        c->check_guards();
}

} // anonymous namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size)
{
    static bool quiet = [] { set_log_threshold(log_level::error); return true; }();
    (void) quiet;
    if (size < 1)
        return 0;
    const std::uint8_t mode = data[0];
    data++;
    size--;
    // Copy into an exactly-sized buffer so ASAN sees any over-read.
    std::vector<std::uint8_t> buf(data, data + size);
    const std::uint8_t *p = buf.data();
    if (mode == 0)
    {
        protocol::packet_header ph;
        if (protocol::decode_packet(ph, p, size) == protocol::decode_status::ok)
        {
            if (ph.payload + ph.payload_length > p + size || ph.size > size)
                __builtin_trap();
        }
        protocol::decode_datagram(ph, p, size);
    }
    else if (mode <= 4)
    {
        static const protocol::link_type links[] = {
            protocol::link_type::ethernet, protocol::link_type::linux_sll,
            protocol::link_type::linux_sll2, protocol::link_type::raw_ipv4};
        protocol::udp_frame f;
        if (protocol::decode_frame(f, links[mode - 1], p, size) == protocol::frame_status::ok)
        {
            if (f.payload < p || f.payload + f.payload_size > p + size)
                __builtin_trap();
            protocol::packet_header ph;
            protocol::decode_datagram(ph, f.payload, f.payload_size);
        }
    }
    else if (size >= 1)
        run_stream(p + 1, size - 1, p[0]);
    return 0;
}
