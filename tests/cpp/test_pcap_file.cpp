/* Standalone test of the pcap replay transport (not built by CMake).

   Build and run from the project root, e.g.:

     g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
         -DSPEAD2_HAVE_PCAP -I src tests/cpp/test_pcap_file.cpp \
         src/transport/pcap/pcap_file.cpp src/transport/pcap/pcap_reader.cpp \
         src/protocol/frame.cpp src/protocol/spead.cpp src/common/logging.cpp \
         src/common/thread_pool.cpp -lpcap -pthread -o /tmp/test_pcap_file
     /tmp/test_pcap_file [tests/data]

   Without -DSPEAD2_HAVE_PCAP / -lpcap the filter tests check that filters
   are refused instead. */

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <unistd.h>

#include "common/logging.h"
#include "common/thread_pool.h"
#include "protocol/frame.h"
#include "protocol/spead.h"
#include "transport/pcap/pcap_file.h"
#include "transport/pcap/pcap_reader.h"

namespace fs = std::filesystem;
using namespace spead2;
using namespace spead2::transport;
using bytes = std::vector<std::uint8_t>;

static int failures = 0;
static int checks = 0;

#define CHECK(cond) \
    do { \
        checks++; \
        if (!(cond)) { std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); failures++; } \
    } while (0)

#define CHECK_EQ(a, b) \
    do { \
        checks++; \
        auto va_ = (a); auto vb_ = (b); \
        if (!(va_ == vb_)) { \
            std::fprintf(stderr, "FAIL %s:%d: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, #b, \
                         (long long) va_, (long long) vb_); \
            failures++; \
        } \
    } while (0)

// ---------------------------------------------------------------------------
// Log capture.  Delivery is asynchronous; flush_log() logs a marker and waits
// until it comes through (the queue is FIFO).

static std::mutex log_mutex;
static std::condition_variable log_cond;
static std::vector<std::string> log_lines;

static void flush_log()
{
    static int counter = 0;
    const std::string marker = "@@flush-" + std::to_string(counter++);
    log_message(log_level::warning, "%s", marker.c_str());
    std::unique_lock<std::mutex> lock(log_mutex);
    log_cond.wait_for(lock, std::chrono::seconds(10), [&] {
        return std::find(log_lines.begin(), log_lines.end(), marker) != log_lines.end();
    });
    log_lines.erase(std::remove(log_lines.begin(), log_lines.end(), marker), log_lines.end());
}

/// Flush, then count and clear the captured warnings containing @a needle.
static int take_warnings(const std::string &needle)
{
    flush_log();
    std::lock_guard<std::mutex> lock(log_mutex);
    int n = 0;
    for (const auto &line : log_lines)
        if (line.find(needle) != std::string::npos)
            n++;
    log_lines.clear();
    return n;
}

static std::vector<std::string> take_all()
{
    flush_log();
    std::lock_guard<std::mutex> lock(log_mutex);
    std::vector<std::string> out;
    out.swap(log_lines);
    return out;
}

static int count_containing(const std::vector<std::string> &lines, const std::string &needle)
{
    return int(std::count_if(lines.begin(), lines.end(),
                             [&](const std::string &l) { return l.find(needle) != std::string::npos; }));
}

static void clear_log()
{
    flush_log();
    std::lock_guard<std::mutex> lock(log_mutex);
    log_lines.clear();
}

// ---------------------------------------------------------------------------
// Files

static fs::path tmp_dir;

static bytes read_all(const fs::path &path)
{
    std::ifstream in(path, std::ios::binary);
    return bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

static std::string write_tmp(const std::string &name, const bytes &content)
{
    fs::path p = tmp_dir / name;
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char *>(content.data()), std::streamsize(content.size()));
    return p.string();
}

static void put16(bytes &b, std::uint16_t v, bool be)
{
    if (be) { b.push_back(v >> 8); b.push_back(v & 0xff); }
    else { b.push_back(v & 0xff); b.push_back(v >> 8); }
}

static void put32(bytes &b, std::uint32_t v, bool be)
{
    for (int i = 0; i < 4; i++)
        b.push_back(std::uint8_t(be ? v >> (24 - 8 * i) : v >> (8 * i)));
}

static void set32le(bytes &b, std::size_t off, std::uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[off + i] = std::uint8_t(v >> (8 * i));
}

static std::uint32_t get32le(const bytes &b, std::size_t off)
{
    return std::uint32_t(b[off]) | std::uint32_t(b[off + 1]) << 8 | std::uint32_t(b[off + 2]) << 16
        | std::uint32_t(b[off + 3]) << 24;
}

/// A record of a little-endian classic pcap (the test captures are all such).
struct record
{
    std::size_t offset;  ///< of the record header
    bytes data;
    std::uint32_t orig_len;
};

static std::vector<record> classic_records(const bytes &file, std::uint32_t *link = nullptr)
{
    std::vector<record> out;
    if (link)
        *link = get32le(file, 20);
    std::size_t pos = 24;
    while (pos + 16 <= file.size())
    {
        std::uint32_t caplen = get32le(file, pos + 8);
        if (caplen > file.size() - pos - 16)
            break;
        out.push_back({pos, bytes(file.begin() + pos + 16, file.begin() + pos + 16 + caplen), get32le(file, pos + 12)});
        pos += 16 + caplen;
    }
    return out;
}

static bytes make_classic(const std::vector<record> &records, std::uint32_t link, bool be, bool nsec)
{
    bytes b;
    put32(b, nsec ? 0xa1b23c4d : 0xa1b2c3d4, be);
    put16(b, 2, be);
    put16(b, 4, be);
    put32(b, 0, be);
    put32(b, 0, be);
    put32(b, 262144, be);
    put32(b, link, be);
    std::uint32_t t = 0;
    for (const auto &r : records)
    {
        put32(b, 1700000000 + t, be);
        put32(b, t++, be);
        put32(b, std::uint32_t(r.data.size()), be);
        put32(b, r.orig_len, be);
        b.insert(b.end(), r.data.begin(), r.data.end());
    }
    return b;
}

// pcapng writer
static void png_block(bytes &b, std::uint32_t type, const bytes &body, bool be)
{
    bytes padded = body;
    while (padded.size() % 4)
        padded.push_back(0);
    const std::uint32_t total = std::uint32_t(padded.size() + 12);
    put32(b, type, be);
    put32(b, total, be);
    b.insert(b.end(), padded.begin(), padded.end());
    put32(b, total, be);
}

static void png_shb(bytes &b, bool be)
{
    bytes body;
    put32(body, 0x1a2b3c4d, be);
    put16(body, 1, be);
    put16(body, 0, be);
    put32(body, 0xffffffff, be);
    put32(body, 0xffffffff, be);
    png_block(b, 0x0a0d0d0a, body, be);
}

static void png_idb(bytes &b, std::uint16_t link, std::uint32_t snaplen, bool be)
{
    bytes body;
    put16(body, link, be);
    put16(body, 0, be);
    put32(body, snaplen, be);
    // an if_tsresol option (9) and opt_endofopt, to exercise option padding
    put16(body, 9, be);
    put16(body, 1, be);
    body.push_back(9);
    body.push_back(0); body.push_back(0); body.push_back(0);
    put16(body, 0, be);
    put16(body, 0, be);
    png_block(b, 1, body, be);
}

static void png_epb(bytes &b, std::uint32_t iface, const bytes &frame, std::uint32_t orig_len, bool be)
{
    bytes body;
    put32(body, iface, be);
    put32(body, 0, be);
    put32(body, 0, be);
    put32(body, std::uint32_t(frame.size()), be);
    put32(body, orig_len, be);
    body.insert(body.end(), frame.begin(), frame.end());
    png_block(b, 6, body, be);
}

static void png_spb(bytes &b, const bytes &frame, bool be)
{
    bytes body;
    put32(body, std::uint32_t(frame.size()), be);
    body.insert(body.end(), frame.begin(), frame.end());
    png_block(b, 3, body, be);
}

// ---------------------------------------------------------------------------
// Scanning a capture through pcap_file + the protocol decoders

struct heap_info
{
    std::int64_t heap_length = -1;
    std::int64_t bytes = 0;
    int packets = 0;
};

struct scan_result
{
    std::uint64_t frames = 0, udp = 0, spead = 0, bad_spead = 0, non_udp = 0;
    std::uint64_t snapped = 0, filtered = 0, unsupported = 0;
    std::map<std::int64_t, heap_info> heaps;
    int complete_heaps() const
    {
        int n = 0;
        for (const auto &h : heaps)
            n += h.second.heap_length >= 0 && h.second.bytes == h.second.heap_length;
        return n;
    }
};

/// Address range of the mapping of @a path, from /proc/self/maps.
static bool find_mapping(const std::string &path, std::uintptr_t &lo, std::uintptr_t &hi)
{
    std::ifstream maps("/proc/self/maps");
    std::string line;
    const std::string canon = fs::canonical(path).string();
    while (std::getline(maps, line))
    {
        if (line.size() < canon.size() || line.compare(line.size() - canon.size(), canon.size(), canon) != 0)
            continue;
        unsigned long a, b;
        if (std::sscanf(line.c_str(), "%lx-%lx", &a, &b) == 2)
        {
            lo = a;
            hi = b;
            return true;
        }
    }
    return false;
}

static scan_result scan(const std::string &path, const std::string &filter = std::string(),
                        bool check_bounds = false)
{
    scan_result r;
    pcap_file file(path, filter);
    std::uintptr_t lo = 0, hi = 0;
    if (check_bounds)
        CHECK(find_mapping(path, lo, hi));
    pcap_frame frame;
    while (file.next(frame))
    {
        r.frames++;
        if (check_bounds)
        {
            const auto start = reinterpret_cast<std::uintptr_t>(frame.data);
            CHECK(start >= lo && start <= hi && frame.size <= hi - start);
        }
        protocol::udp_frame udp;
        if (protocol::decode_frame(udp, frame.link, frame.data, frame.size) != protocol::frame_status::ok)
        {
            r.non_udp++;
            continue;
        }
        r.udp++;
        protocol::packet_header h;
        if (!protocol::decode_datagram(h, udp.payload, udp.payload_size))
        {
            r.bad_spead++;
            continue;
        }
        r.spead++;
        heap_info &hi_ = r.heaps[h.heap_cnt];
        hi_.packets++;
        hi_.bytes += h.payload_length;
        if (h.heap_length >= 0)
            hi_.heap_length = h.heap_length;
    }
    CHECK_EQ(r.frames, file.frames());
    r.snapped = file.snapped_frames();
    r.filtered = file.filtered_frames();
    r.unsupported = file.unsupported_frames();
    return r;
}

template<typename E>
static bool throws(const std::function<void()> &f, const std::string &needle = std::string(),
                   std::string *what = nullptr)
{
    try
    {
        f();
    }
    catch (const E &e)
    {
        if (what)
            *what = e.what();
        if (!needle.empty() && std::string(e.what()).find(needle) == std::string::npos)
        {
            std::fprintf(stderr, "  message '%s' lacks '%s'\n", e.what(), needle.c_str());
            return false;
        }
        return true;
    }
    catch (const std::exception &e)
    {
        std::fprintf(stderr, "  unexpected exception type: %s\n", e.what());
        return false;
    }
    return false;
}

// ---------------------------------------------------------------------------
// A sink for the reader test

class counting_sink : public packet_sink
{
public:
    std::mutex mutex;
    std::condition_variable cond;
    std::uint64_t packets = 0, malformed = 0, batches = 0;
    std::map<std::int64_t, std::int64_t> heap_bytes;
    bool eos = false, in_batch = false;
    std::uint64_t stop_after = UINT64_MAX;  ///< pretend the stream stops after this many packets
    bool stopped = false;

    bool batch_begin() override
    {
        std::unique_lock<std::mutex> lock(mutex);
        CHECK(!in_batch);
        if (stopped)
            return false;
        in_batch = true;
        batches++;
        return true;
    }
    bool batch_packets(const protocol::packet_header *p, std::size_t n) override
    {
        std::unique_lock<std::mutex> lock(mutex);
        CHECK(in_batch);
        CHECK(n > 0 && n <= pcap_reader::BATCH_FRAMES);
        for (std::size_t i = 0; i < n; i++)
        {
            if (packets >= stop_after)
            {
                stopped = true;
                return false;
            }
            packets++;
            heap_bytes[p[i].heap_cnt] += p[i].payload_length;
            // Touch the payload, so that ASan would notice a bad pointer.
            volatile std::uint8_t sum = 0;
            for (std::int64_t j = 0; j < p[i].payload_length; j++)
                sum = sum + p[i].payload[j];
        }
        return true;
    }
    void batch_malformed(std::size_t n) override
    {
        std::unique_lock<std::mutex> lock(mutex);
        malformed += n;
    }
    void batch_end(bool end_of_stream) override
    {
        std::unique_lock<std::mutex> lock(mutex);
        CHECK(in_batch);
        in_batch = false;
        if (end_of_stream)
        {
            CHECK(!eos);
            eos = true;
            stopped = true;
        }
        cond.notify_all();
    }
    bool wait_eos_or_stop()
    {
        std::unique_lock<std::mutex> lock(mutex);
        return cond.wait_for(lock, std::chrono::seconds(20), [&] { return eos || (stopped && !in_batch); });
    }
};

// ---------------------------------------------------------------------------

static std::size_t manifest_heaps(const fs::path &json)
{
    std::ifstream in(json);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    std::size_t n = 0;
    for (std::size_t pos = text.find("\"sha256\""); pos != std::string::npos; pos = text.find("\"sha256\"", pos + 1))
        n++;
    return n;
}

static void test_real_captures(const fs::path &data_dir, thread_pool &pool)
{
    std::vector<fs::path> captures;
    for (const auto &entry : fs::directory_iterator(data_dir))
        if (entry.path().extension() == ".pcap" || entry.path().extension() == ".pcapng")
            captures.push_back(entry.path());
    std::sort(captures.begin(), captures.end());
    CHECK(captures.size() >= 4);
    for (const auto &path : captures)
    {
        fs::path json = path;
        json.replace_extension(".json");
        const std::size_t data_heaps = manifest_heaps(json);
        const std::size_t expected_heaps = data_heaps + 2;  // + descriptors + stop
        scan_result r = scan(path.string(), "", true);
        std::printf("%-28s %-7s frames=%llu udp=%llu spead=%llu bad_spead=%llu non_udp=%llu heaps=%zu "
                    "complete=%d (manifest: %zu data heaps + 2)\n",
                    path.filename().c_str(), path.extension() == ".pcapng" ? "pcapng" : "pcap",
                    (unsigned long long) r.frames, (unsigned long long) r.udp, (unsigned long long) r.spead,
                    (unsigned long long) r.bad_spead, (unsigned long long) r.non_udp, r.heaps.size(),
                    r.complete_heaps(), data_heaps);
        CHECK_EQ(r.heaps.size(), expected_heaps);
        CHECK_EQ(std::size_t(r.complete_heaps()), expected_heaps);
        CHECK_EQ(r.bad_spead, 0u);
        CHECK_EQ(r.snapped, 0u);
        CHECK(r.frames >= r.spead);
        if (path.filename().string().find("multi") != std::string::npos)
            CHECK(r.spead > expected_heaps);
        else
            CHECK_EQ(r.spead, expected_heaps);

        // The same through pcap_reader on a worker thread.
        counting_sink sink;
        auto rd = std::make_shared<pcap_reader>(sink, pool.pick_worker(), path.string(), "");
        rd->start();
        CHECK(sink.wait_eos_or_stop());
        {
            std::lock_guard<std::mutex> lock(sink.mutex);
            CHECK(sink.eos);
            CHECK_EQ(sink.packets, r.spead);
            CHECK_EQ(sink.malformed, r.bad_spead);
            CHECK_EQ(sink.heap_bytes.size(), expected_heaps);
            CHECK(sink.batches >= r.frames / pcap_reader::BATCH_FRAMES);
            std::printf("  pcap_reader: packets=%llu malformed=%llu batches=%llu non_udp_frames=%llu eos=%d\n",
                        (unsigned long long) sink.packets, (unsigned long long) sink.malformed,
                        (unsigned long long) sink.batches, (unsigned long long) rd->non_udp_frames.load(),
                        int(sink.eos));
        }
        CHECK_EQ(rd->non_udp_frames.load(), r.non_udp);
        rd->request_stop();
        rd->close();
    }
}

static void test_reader_stop(const fs::path &data_dir, thread_pool &pool)
{
    const std::string path = (data_dir / "lo-64-48-8k-multi.pcap").string();
    // The sink stops the stream part-way: no end of stream, no more batches.
    {
        counting_sink sink;
        sink.stop_after = 100;
        auto rd = std::make_shared<pcap_reader>(sink, pool.pick_worker(), path, "");
        rd->start();
        CHECK(sink.wait_eos_or_stop());
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        std::lock_guard<std::mutex> lock(sink.mutex);
        CHECK(!sink.eos);
        CHECK_EQ(sink.packets, 100u);
        CHECK_EQ(sink.batches, 2u);  // 64 + 36 of the second batch
    }
    // request_stop before the task runs: nothing is delivered.
    {
        counting_sink sink;
        auto rd = std::make_shared<pcap_reader>(sink, pool.pick_worker(), path, "");
        rd->request_stop();
        rd->start();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        rd->close();
        std::lock_guard<std::mutex> lock(sink.mutex);
        CHECK_EQ(sink.batches, 0u);
    }
    // Other traffic and malformed SPEAD: counted, not delivered.
    {
        auto records = classic_records(read_all(path));
        std::vector<record> mixed;
        for (std::size_t i = 0; i < 150; i++)
        {
            mixed.push_back(records[i]);
            record r = records[i];
            switch (i % 5)
            {
            case 0: r.data[12] = 0x08; r.data[13] = 0x06; break;            // ARP ethertype: not IPv4
            case 1: r.data[protocol::ETHERNET_HEADER_SIZE + 9] = 6; break;  // TCP
            case 2:                                                         // SPEAD magic broken
                r.data[protocol::ETHERNET_HEADER_SIZE + protocol::IPV4_MIN_HEADER_SIZE
                       + protocol::UDP_HEADER_SIZE] = 0x99;
                break;
            default: continue;
            }
            mixed.push_back(r);
        }
        const std::string mixed_path = write_tmp("mixed.pcap", make_classic(mixed, 1, false, false));
        const scan_result expect = scan(mixed_path);
        CHECK_EQ(expect.spead, 150u);
        CHECK_EQ(expect.non_udp, 60u);
        CHECK_EQ(expect.bad_spead, 30u);
        counting_sink sink;
        auto rd = std::make_shared<pcap_reader>(sink, pool.pick_worker(), mixed_path, "");
        rd->start();
        CHECK(sink.wait_eos_or_stop());
        std::lock_guard<std::mutex> lock(sink.mutex);
        CHECK(sink.eos);
        CHECK_EQ(sink.packets, 150u);
        CHECK_EQ(sink.malformed, 30u);
        CHECK_EQ(rd->non_udp_frames.load(), 60u);
        std::printf("mixed traffic via pcap_reader: packets=%llu malformed=%llu non_udp_frames=%llu\n",
                    (unsigned long long) sink.packets, (unsigned long long) sink.malformed,
                    (unsigned long long) rd->non_udp_frames.load());
    }
    // Errors surface from the constructor.
    {
        counting_sink sink;
        CHECK(throws<std::system_error>([&] {
            pcap_reader rd(sink, pool.pick_worker(), (tmp_dir / "missing.pcap").string(), "");
        }, "missing.pcap"));
    }
}

static void test_reencoded(const fs::path &data_dir)
{
    std::uint32_t link;
    const bytes single = read_all(data_dir / "lo-64-40-1k-single.pcap");
    const auto records = classic_records(single, &link);
    CHECK_EQ(link, 1u);
    const scan_result base = scan((data_dir / "lo-64-40-1k-single.pcap").string());
    CHECK_EQ(records.size(), base.frames);

    for (bool be : {false, true})
        for (bool nsec : {false, true})
        {
            const std::string name = std::string("reenc-") + (be ? "be" : "le") + (nsec ? "-ns" : "-us") + ".pcap";
            scan_result r = scan(write_tmp(name, make_classic(records, 1, be, nsec)), "", true);
            CHECK_EQ(r.frames, base.frames);
            CHECK_EQ(r.spead, base.spead);
            CHECK_EQ(r.complete_heaps(), base.complete_heaps());
        }

    // Raw IPv4: strip the Ethernet headers.
    std::vector<record> raw = records;
    for (auto &rec : raw)
    {
        rec.data.erase(rec.data.begin(), rec.data.begin() + protocol::ETHERNET_HEADER_SIZE);
        rec.orig_len -= protocol::ETHERNET_HEADER_SIZE;
    }
    for (std::uint32_t lt : {101u, 228u})
    {
        scan_result r = scan(write_tmp("raw-" + std::to_string(lt) + ".pcap", make_classic(raw, lt, lt == 228, false)));
        CHECK_EQ(r.spead, base.spead);
        CHECK_EQ(r.non_udp, 0u);
    }
    // The link-type field's FCS bits are ignored.
    scan_result fcs = scan(write_tmp("fcs.pcap", make_classic(records, 1u | (1u << 28), false, false)));
    CHECK_EQ(fcs.spead, base.spead);
}

static void test_synthetic_pcapng(const fs::path &data_dir)
{
    const auto records = classic_records(read_all(data_dir / "lo-64-40-1k-single.pcap"));
    const std::size_t n = records.size();
    const std::size_t half = n / 2;
    bytes f;
    // Section 1, big endian: Ethernet interface 0, an unsupported interface 1.
    png_shb(f, true);
    png_idb(f, 1, 0, true);
    png_idb(f, 105, 65535, true);
    for (std::size_t i = 0; i < half; i++)
    {
        png_epb(f, 0, records[i].data, records[i].orig_len, true);
        if (i == 3 || i == 7)
            png_epb(f, 1, bytes(60, 0xab), 60, true);   // unsupported link type: skipped
        if (i == 5)
            png_block(f, 0x00000bad, bytes(10, 1), true);  // unknown block type: skipped
        if (i == 6)
            png_epb(f, 9, records[i].data, records[i].orig_len, true);  // no such interface: skipped
    }
    png_spb(f, records[half].data, true);
    // Section 2, little endian: raw IPv4, snapshot length 65535.
    png_shb(f, false);
    png_idb(f, 228, 65535, false);
    for (std::size_t i = half + 1; i < n; i++)
    {
        bytes ip(records[i].data.begin() + protocol::ETHERNET_HEADER_SIZE, records[i].data.end());
        if (i % 2)
            png_epb(f, 0, ip, std::uint32_t(ip.size()), false);
        else
            png_spb(f, ip, false);
    }
    // An SPB cut by a small snapshot length (section 3): snapped, skipped.
    png_shb(f, false);
    png_idb(f, 1, 64, false);
    {
        bytes body;
        put32(body, std::uint32_t(records[0].data.size()), false);
        body.insert(body.end(), records[0].data.begin(), records[0].data.begin() + 64);
        png_block(f, 3, body, false);
    }
    const std::string path = write_tmp("synthetic.pcapng", f);
    clear_log();
    scan_result r = scan(path, "", true);
    std::printf("synthetic pcapng (3 sections, BE+LE, EPB+SPB): frames=%llu spead=%llu unsupported=%llu "
                "snapped=%llu\n",
                (unsigned long long) r.frames, (unsigned long long) r.spead,
                (unsigned long long) r.unsupported, (unsigned long long) r.snapped);
    CHECK_EQ(r.frames, n);
    CHECK_EQ(r.spead, n);
    CHECK_EQ(r.unsupported, 3u);
    CHECK_EQ(r.snapped, 1u);
    const auto warnings = take_all();
    for (const auto &w : warnings)
        std::printf("  warning: %s\n", w.c_str());
    CHECK_EQ(warnings.size(), 3u);  // each kind once
    CHECK_EQ(count_containing(warnings, "link type 105"), 1);
    CHECK_EQ(count_containing(warnings, "interface 9"), 1);
    CHECK_EQ(count_containing(warnings, "snapshot length"), 1);

    // Only unsupported interfaces up front: refused.
    bytes g;
    png_shb(g, false);
    png_idb(g, 105, 0, false);
    png_epb(g, 0, bytes(60, 0), 60, false);
    CHECK(throws<std::invalid_argument>([&] { pcap_file x(write_tmp("only105.pcapng", g)); }, "105"));

    // An SHB with a bad byte-order magic as the first block.
    bytes h;
    png_shb(h, false);
    h[8] = 0x99;
    CHECK(throws<std::invalid_argument>([&] { pcap_file x(write_tmp("badbom.pcapng", h)); }, "badbom.pcapng"));

    // pcapng with a bad major version.
    bytes v;
    png_shb(v, false);
    v[12] = 2;
    CHECK(throws<std::invalid_argument>([&] { pcap_file x(write_tmp("v2.pcapng", v)); }, "version"));
}

static void test_truncation(const fs::path &data_dir)
{
    const fs::path src = data_dir / "lo-64-40-1k-single.pcap";
    const bytes file = read_all(src);
    const auto records = classic_records(file);
    const std::size_t k = 10;
    // Cut inside record k's data.
    {
        bytes cut(file.begin(), file.begin() + records[k].offset + 16 + 30);
        clear_log();
        scan_result r = scan(write_tmp("trunc-data.pcap", cut));
        CHECK_EQ(r.frames, k);
        CHECK_EQ(r.spead, k);
        CHECK_EQ(take_warnings("truncated"), 1);
        std::printf("truncated pcap (cut inside record %zu's data): frames=%llu\n", k,
                    (unsigned long long) r.frames);
    }
    // Cut inside record k's header.
    {
        bytes cut(file.begin(), file.begin() + records[k].offset + 7);
        clear_log();
        scan_result r = scan(write_tmp("trunc-hdr.pcap", cut));
        CHECK_EQ(r.frames, k);
        CHECK_EQ(take_warnings("truncated"), 1);
    }
    // Cut exactly at a record boundary: clean end, no warning.
    {
        bytes cut(file.begin(), file.begin() + records[k].offset);
        clear_log();
        scan_result r = scan(write_tmp("trunc-clean.pcap", cut));
        CHECK_EQ(r.frames, k);
        CHECK_EQ(take_warnings("truncated"), 0);
    }
    // Header only: no frames.
    {
        bytes cut(file.begin(), file.begin() + 24);
        scan_result r = scan(write_tmp("header-only.pcap", cut));
        CHECK_EQ(r.frames, 0u);
    }
    // Truncated pcapng: cut the real one in the middle.
    {
        const bytes png = read_all(data_dir / "lo-64-48-8k-multi.pcapng");
        const scan_result full = scan((data_dir / "lo-64-48-8k-multi.pcapng").string());
        bytes cut(png.begin(), png.begin() + png.size() / 2 + 3);
        clear_log();
        scan_result r = scan(write_tmp("trunc.pcapng", cut));
        CHECK(r.frames > 0 && r.frames < full.frames);
        CHECK_EQ(take_warnings("truncated"), 1);
        std::printf("truncated pcapng (cut at %zu of %zu bytes): frames=%llu of %llu\n", cut.size(), png.size(),
                    (unsigned long long) r.frames, (unsigned long long) full.frames);
    }
}

static void test_corrupt_pcapng(const fs::path &data_dir)
{
    const bytes png = read_all(data_dir / "lo-64-48-8k-multi.pcapng");
    // Find the offset of the 10th block.
    std::size_t pos = 0;
    for (int i = 0; i < 10; i++)
        pos += get32le(png, pos + 4);
    const std::size_t blocks_before_packets = 2;  // SHB + IDB in this file
    const std::uint64_t expected = 10 - blocks_before_packets;
    struct variant { const char *name; std::uint32_t length; const char *needle; };
    for (const variant &v : {variant{"small", 8, "smaller than 12"}, variant{"odd", 13, "multiple of 4"},
                             variant{"huge", 0xfffffff0u, "past the end"}, variant{"zero", 0, "smaller than 12"},
                             variant{"mismatch", 0, "trailing"}})
    {
        bytes b = png;
        if (std::string(v.name) == "mismatch")
            set32le(b, pos + 4, get32le(b, pos + 4) + 4);  // next block's type read as the trailer
        else
            set32le(b, pos + 4, v.length);
        clear_log();
        scan_result r = scan(write_tmp(std::string("corrupt-") + v.name + ".pcapng", b));
        CHECK_EQ(r.frames, expected);
        CHECK_EQ(take_warnings(v.needle), 1);
    }
    // Captured length inside an EPB larger than the block.
    {
        bytes b = png;
        set32le(b, pos + 8 + 12, 0x7fffffff);
        clear_log();
        scan_result r = scan(write_tmp("corrupt-caplen.pcapng", b));
        CHECK_EQ(r.frames, expected);
        CHECK_EQ(take_warnings("captured length exceeds"), 1);
    }
}

static void test_snapped(const fs::path &data_dir)
{
    const bytes file = read_all(data_dir / "lo-64-40-1k-single.pcap");
    const auto records = classic_records(file);
    bytes b = file;
    for (std::size_t k : {3, 8})
        set32le(b, records[k].offset + 12, std::uint32_t(records[k].data.size() + 100));
    clear_log();
    scan_result r = scan(write_tmp("snapped.pcap", b));
    CHECK_EQ(r.frames, records.size() - 2);
    CHECK_EQ(r.snapped, 2u);
    CHECK_EQ(take_warnings("snapshot length"), 1);
    std::printf("snapped records: frames=%llu snapped=%llu (one warning)\n", (unsigned long long) r.frames,
                (unsigned long long) r.snapped);
}

static void test_errors(const fs::path &data_dir)
{
    std::string what;
    const std::string missing = (tmp_dir / "no-such-file.pcap").string();
    CHECK(throws<std::system_error>([&] { pcap_file f(missing); }, "no-such-file.pcap", &what));
    try { pcap_file f(missing); } catch (const std::system_error &e) { CHECK(e.code().value() == ENOENT); }
    std::printf("missing file: %s\n", what.c_str());

    CHECK(throws<std::system_error>([&] { pcap_file f(tmp_dir.string()); }));

    if (geteuid() != 0)
    {
        const std::string unreadable = write_tmp("unreadable.pcap", read_all(data_dir / "lo-64-40-1k-single.pcap"));
        fs::permissions(unreadable, fs::perms::none);
        CHECK(throws<std::system_error>([&] { pcap_file f(unreadable); }, "unreadable.pcap"));
    }

    CHECK(throws<std::invalid_argument>([&] { pcap_file f(write_tmp("empty.pcap", {})); }, "empty", &what));
    std::printf("empty file: %s\n", what.c_str());
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(write_tmp("three.pcap", {0xd4, 0xc3, 0xb2})); },
                                        "three.pcap", &what));
    std::printf("3-byte file: %s\n", what.c_str());
    bytes junk(100, 0x42);
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(write_tmp("junk.pcap", junk)); }, "junk.pcap", &what));
    std::printf("bad magic: %s\n", what.c_str());
    bytes short_hdr = make_classic({}, 1, false, false);
    short_hdr.resize(20);
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(write_tmp("shorthdr.pcap", short_hdr)); }, "truncated"));
    bytes png;
    png_shb(png, false);
    png.resize(20);
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(write_tmp("shorthdr.pcapng", png)); }, "truncated"));

    auto records = classic_records(read_all(data_dir / "lo-64-40-1k-single.pcap"));
    for (bool be : {false, true})
    {
        CHECK(throws<std::invalid_argument>([&] {
            pcap_file f(write_tmp("lt105.pcap", make_classic(records, 105, be, false)));
        }, "105", &what));
    }
    std::printf("link type 105: %s\n", what.c_str());
}

static void test_filters(const fs::path &data_dir)
{
    const std::string single = (data_dir / "lo-64-40-1k-single.pcap").string();
    const std::string sll2 = (data_dir / "any-64-40-4k-jumbo.pcap").string();
    const std::string png = (data_dir / "lo-64-48-8k-multi.pcapng").string();
#ifdef SPEAD2_HAVE_PCAP
    const scan_result all = scan(single);
    scan_result r = scan(single, "udp dst port 9001");
    CHECK_EQ(r.spead, all.spead);
    CHECK_EQ(r.filtered, 0u);
    r = scan(single, "udp port 1234");
    CHECK_EQ(r.frames, 0u);
    CHECK_EQ(r.filtered, all.frames);
    const scan_result all2 = scan(sll2);
    r = scan(sll2, "udp and dst port 9003");
    CHECK_EQ(r.spead, all2.spead);
    r = scan(sll2, "tcp");
    CHECK_EQ(r.frames, 0u);
    const scan_result all3 = scan(png);
    r = scan(png, "udp dst port 9002 and src host 127.0.0.1");
    CHECK_EQ(r.spead, all3.spead);
    std::printf("filters: 'udp dst port 9001' -> %llu/%llu spead, 'udp port 1234' -> 0 frames (%llu filtered), "
                "SLL2 and pcapng filtered OK\n",
                (unsigned long long) scan(single, "udp dst port 9001").spead, (unsigned long long) all.spead,
                (unsigned long long) all.frames);
    // Raw IPv4 (101 -> DLT_RAW, 228 -> DLT_IPV4).
    auto records = classic_records(read_all(single));
    for (auto &rec : records)
    {
        rec.data.erase(rec.data.begin(), rec.data.begin() + protocol::ETHERNET_HEADER_SIZE);
        rec.orig_len -= protocol::ETHERNET_HEADER_SIZE;
    }
    for (std::uint32_t lt : {101u, 228u})
    {
        r = scan(write_tmp("rawf-" + std::to_string(lt) + ".pcap", make_classic(records, lt, false, false)),
                 "udp port 9001");
        CHECK_EQ(r.spead, all.spead);
    }
    std::string what;
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(single, "udp port ((("); }, "", &what));
    std::printf("bad filter: %s\n", what.c_str());
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(png, "no such syntax"); }, "no such syntax"));
#else
    CHECK(throws<std::invalid_argument>([&] { pcap_file f(single, "udp"); }, "libpcap"));
#endif
    CHECK_EQ(scan(single, "").frames, scan(single).frames);
}

/// Random corruption of small captures: must never crash or read outside the
/// mapping (ASan / the frame bounds check), only stop or skip.
static void test_fuzz(const fs::path &data_dir)
{
    std::mt19937 rng(12345);
    std::vector<bytes> seeds;
    {
        const bytes single = read_all(data_dir / "lo-64-40-1k-single.pcap");
        seeds.emplace_back(single.begin(), single.begin() + std::min<std::size_t>(single.size(), 8192));
        const bytes png = read_all(data_dir / "lo-64-48-8k-multi.pcapng");
        seeds.emplace_back(png.begin(), png.begin() + std::min<std::size_t>(png.size(), 8192));
        const auto records = classic_records(single);
        seeds.push_back(make_classic({records.begin(), records.begin() + 5}, 1, true, true));
        bytes f;
        png_shb(f, true);
        png_idb(f, 1, 100, true);
        png_spb(f, records[0].data, true);
        png_epb(f, 0, records[1].data, records[1].orig_len, true);
        png_shb(f, false);
        png_idb(f, 113, 0, false);
        png_epb(f, 0, bytes(40, 0), 40, false);
        seeds.push_back(f);
    }
    std::uint64_t opened = 0, rejected = 0, frames = 0;
    const int iterations = 3000;
    for (int it = 0; it < iterations; it++)
    {
        bytes b = seeds[it % seeds.size()];
        const int mutations = 1 + int(rng() % 8);
        for (int m = 0; m < mutations; m++)
        {
            const std::size_t off = rng() % b.size();
            switch (rng() % 4)
            {
            case 0: b[off] = std::uint8_t(rng()); break;
            case 1:  // a random 32-bit value at a 4-aligned offset (lengths, ids)
                if (off / 4 * 4 + 4 <= b.size())
                    set32le(b, off / 4 * 4, std::uint32_t(rng()));
                break;
            case 2:
                if (off / 4 * 4 + 4 <= b.size())
                    set32le(b, off / 4 * 4, std::uint32_t(rng() % 0x200));
                break;
            case 3: b.resize(off + 1); break;
            }
        }
        const std::string path = write_tmp("fuzz.bin", b);
        try
        {
            scan_result r = scan(path, "", true);
            opened++;
            frames += r.frames;
        }
        catch (const std::invalid_argument &)
        {
            rejected++;
        }
    }
    clear_log();
    std::printf("fuzz: %d mutated files, %llu opened (%llu frames), %llu rejected with invalid_argument\n",
                iterations, (unsigned long long) opened, (unsigned long long) frames,
                (unsigned long long) rejected);
}

int main(int argc, char **argv)
{
    const fs::path data_dir = argc > 1 ? fs::path(argv[1]) : fs::path("tests/data");
    char templ[] = "/tmp/test_pcap_file.XXXXXX";
    if (!mkdtemp(templ))
    {
        std::perror("mkdtemp");
        return 2;
    }
    tmp_dir = templ;
    set_log_sink([](log_level level, const std::string &msg) {
        if (level >= log_level::warning)
        {
            std::lock_guard<std::mutex> lock(log_mutex);
            log_lines.push_back(msg);
            log_cond.notify_all();
        }
    });
    set_log_threshold(log_level::warning);  // decode_datagram's drops are info level

    {
        thread_pool pool(2);
        test_real_captures(data_dir, pool);
        test_reader_stop(data_dir, pool);
        pool.stop();
    }
    test_reencoded(data_dir);
    test_synthetic_pcapng(data_dir);
    test_truncation(data_dir);
    test_corrupt_pcapng(data_dir);
    test_snapped(data_dir);
    test_errors(data_dir);
    test_filters(data_dir);
    test_fuzz(data_dir);

    flush_log();
    stop_log_delivery();
    fs::remove_all(tmp_dir);
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
