/* Emulated RDMA NIC for testing spead2's ibverbs receive path without hardware.
 *
 * One shared library that stands in for libibverbs.so.1, librdmacm.so.1 and
 * libmlx5.so.1 at once.  It exports the entry points the production code
 * resolves with dlsym (same names, same prototypes as the system headers) and
 * fills in the function tables (struct ibv_context_ops, struct verbs_context,
 * struct ibv_cq_ex) that the static inline helpers of <infiniband/verbs.h>
 * call through.
 *
 * Frames come from a "wire" (a UDP socket carrying one Ethernet frame per
 * datagram, or a pcap file), are steered by the flow rules created with
 * ibv_create_flow, and are written into the receive buffers the application
 * posted: receive WRs of a plain RAW_PACKET QP, or multi-packet (striding)
 * WQEs of an mlx5dv striding WQ behind an RSS QP.  See README.md.
 *
 * Locking: one device mutex (Global::mu) protects the topology (flows, MRs,
 * object links and states) and every per-queue consumer state of the NIC; it
 * is held while a frame is processed.  The data structures shared with the
 * application's data path are lock-free where the application side is hot:
 * completion rings (single producer = whoever holds mu; consumer side under a
 * per-CQ mutex) and the striding WQ doorbell record (acquire load).
 */

#include "spead2_emu.h"

#include <infiniband/verbs.h>
#include <infiniband/mlx5dv.h>
#include <rdma/rdma_cma.h>

#include <arpa/inet.h>
#include <endian.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <linux/capability.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */

bool g_log_enabled = false;

__attribute__((format(printf, 1, 2)))
void emu_warn(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "spead2-ibv-emu: %s\n", buf);
}

#define EMU_LOG(...) do { if (g_log_enabled) emu_warn(__VA_ARGS__); } while (0)

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */

enum class wire_kind { none, udp, pcap };

struct config
{
    in_addr_t iface = htonl(INADDR_LOOPBACK);   // network byte order
    uint8_t mac[6] = {0x02, 0, 0, 0, 0, 0x01};
    bool no_devices = false;         // the RDMA stack is installed but has no device
    bool no_mprq = false;
    bool no_mpw = false;   ///< MLX5DV_CONTEXT_FLAGS_MPW_ALLOWED (a send-side flag) not reported
    bool no_flow = false;
    bool no_raw = false;
    bool old_flow_abi = false;       // flow verbs only in the legacy (pre-v13) slots
    int max_qp_wr = 8192;
    int max_cqe = 1 << 20;
    uint64_t max_mr_size = UINT64_C(1) << 32;
    wire_kind wire = wire_kind::none;
    sockaddr_in udp_addr{};
    std::string pcap_path;
    double pcap_rate = 0.0;          // frames per second, 0 = full speed
    bool pcap_lossless = false;
    std::string stats_path;
    // Fault injection: frames (1-based, counted over frames that reach a
    // receive queue) that complete with an error (the queue goes to ERR),
    // or that find their CQ broken (a fatal CQ error, as on an overrun).
    std::vector<uint64_t> error_frames;
    uint64_t error_frames_from = 0;    // N+: every frame from N on (0: none)
    uint64_t cq_error_at = 0;
    uint64_t send_error_at = 0;      // the N-th send WR (from 1, all QPs) fails with a protection error
    // Where sent frames go (SPEAD2_EMU_SEND_WIRE).
    wire_kind send_wire = wire_kind::none;
    sockaddr_in send_udp_addr{};     // port 0: each frame's own UDP destination port
    std::string send_pcap_path;
};

constexpr int num_comp_vectors = 4;
constexpr int max_sge = 16;
constexpr int max_objects = 1 << 16;
constexpr uint32_t min_stride_log = 6, max_stride_log = 13;
constexpr uint32_t min_strides_log = 3, max_strides_log = 16;
constexpr uint32_t filler_flag = 0x80000000u;
// Largest frame the send queue accepts (a ConnectX port's largest MTU plus
// the Ethernet header); larger ones complete with IBV_WC_LOC_LEN_ERR.
constexpr size_t max_send_frame = 9978 + 14;
// Bytes of send queue ring charged against RLIMIT_MEMLOCK per send WR.
constexpr uint64_t send_wqe_bytes = 64;

const char *env(const char *name)
{
    const char *v = getenv(name);
    return (v && *v) ? v : nullptr;
}

bool env_flag(const char *name)
{
    const char *v = env(name);
    return v && strcmp(v, "0") != 0;
}

uint64_t env_u64(const char *name, uint64_t def, uint64_t lo, uint64_t hi)
{
    const char *v = env(name);
    if (!v)
        return def;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 0);
    if (errno || *end || x < lo || x > hi)
    {
        emu_warn("ignoring invalid %s=%s (want %" PRIu64 "..%" PRIu64 ")", name, v, lo, hi);
        return def;
    }
    return x;
}

bool parse_mac(const char *s, uint8_t out[6])
{
    unsigned int b[6];
    char tail;
    if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
        return false;
    for (int i = 0; i < 6; i++)
    {
        if (b[i] > 0xff)
            return false;
        out[i] = uint8_t(b[i]);
    }
    return true;
}

/// "ADDR:PORT" (IPv4, the part after "udp:") -> @a out; false if malformed.
bool parse_udp_endpoint(const std::string &rest, sockaddr_in &out)
{
    auto colon = rest.rfind(':');
    if (colon == std::string::npos)
        return false;
    char *end = nullptr;
    unsigned long port = strtoul(rest.c_str() + colon + 1, &end, 10);
    in_addr a;
    if (!end || *end || port > 65535 || inet_pton(AF_INET, rest.substr(0, colon).c_str(), &a) != 1)
        return false;
    out.sin_family = AF_INET;
    out.sin_addr = a;
    out.sin_port = htons(uint16_t(port));
    return true;
}

void load_config(config &c)
{
    g_log_enabled = env_flag("SPEAD2_EMU_LOG");
    if (const char *v = env("SPEAD2_EMU_INTERFACE"))
    {
        in_addr a;
        if (inet_pton(AF_INET, v, &a) == 1)
            c.iface = a.s_addr;
        else
            emu_warn("ignoring invalid SPEAD2_EMU_INTERFACE=%s", v);
    }
    if (const char *v = env("SPEAD2_EMU_MAC"))
    {
        if (!parse_mac(v, c.mac))
            emu_warn("ignoring invalid SPEAD2_EMU_MAC=%s", v);
    }
    c.no_devices = env_flag("SPEAD2_EMU_NO_DEVICES");
    c.no_mprq = env_flag("SPEAD2_EMU_NO_MPRQ");
    c.no_mpw = env_flag("SPEAD2_EMU_NO_MPW");
    c.no_flow = env_flag("SPEAD2_EMU_NO_FLOW");
    c.no_raw = env_flag("SPEAD2_EMU_NO_RAW");
    c.old_flow_abi = env_flag("SPEAD2_EMU_OLD_FLOW_ABI");
    c.max_qp_wr = int(env_u64("SPEAD2_EMU_MAX_QP_WR", 8192, 1, 1 << 20));
    c.max_cqe = int(env_u64("SPEAD2_EMU_MAX_CQE", 1 << 20, 1, 1 << 26));
    c.max_mr_size = env_u64("SPEAD2_EMU_MAX_MR_SIZE", UINT64_C(1) << 32, 1, UINT64_MAX);
    if (const char *v = env("SPEAD2_EMU_STATS"))
        c.stats_path = v;
    if (const char *v = env("SPEAD2_EMU_PCAP_RATE"))
    {
        char *end;
        double r = strtod(v, &end);
        if (*end || !(r >= 0.0))
            emu_warn("ignoring invalid SPEAD2_EMU_PCAP_RATE=%s", v);
        else
            c.pcap_rate = r;
    }
    c.pcap_lossless = env_flag("SPEAD2_EMU_PCAP_LOSSLESS");
    if (const char *v = env("SPEAD2_EMU_ERROR_FRAMES"))
    {
        // "N", "N,M,...", or "N+" (every frame from N on).
        std::string list = v;
        size_t pos = 0;
        while (pos < list.size())
        {
            size_t comma = list.find(',', pos);
            std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
            char *end = nullptr;
            unsigned long long n = strtoull(item.c_str(), &end, 10);
            if (n == 0 || !end || (*end && strcmp(end, "+") != 0))
                emu_warn("ignoring invalid item '%s' of SPEAD2_EMU_ERROR_FRAMES", item.c_str());
            else if (*end == '+')
                c.error_frames_from = n;
            else
                c.error_frames.push_back(n);
            if (comma == std::string::npos)
                break;
            pos = comma + 1;
        }
    }
    c.cq_error_at = env_u64("SPEAD2_EMU_CQ_ERROR_AT", 0, 0, UINT64_MAX);
    c.send_error_at = env_u64("SPEAD2_EMU_SEND_ERROR_AT", 0, 0, UINT64_MAX);
    if (const char *v = env("SPEAD2_EMU_SEND_WIRE"))
    {
        std::string w = v;
        bool ok = false;
        if (w.compare(0, 4, "udp:") == 0)
        {
            if (parse_udp_endpoint(w.substr(4), c.send_udp_addr))
            {
                c.send_wire = wire_kind::udp;
                ok = true;
            }
        }
        else if (w.compare(0, 5, "pcap:") == 0 && w.size() > 5)
        {
            c.send_wire = wire_kind::pcap;
            c.send_pcap_path = w.substr(5);
            ok = true;
        }
        if (!ok)
            emu_warn("ignoring invalid SPEAD2_EMU_SEND_WIRE=%s (want udp:ADDR:PORT or pcap:/path)", v);
    }
    if (const char *v = env("SPEAD2_EMU_WIRE"))
    {
        std::string w = v;
        if (w.compare(0, 4, "udp:") == 0)
        {
            if (parse_udp_endpoint(w.substr(4), c.udp_addr))
                c.wire = wire_kind::udp;
            else
                emu_warn("ignoring invalid SPEAD2_EMU_WIRE=%s (want udp:ADDR:PORT)", v);
        }
        else if (w.compare(0, 5, "pcap:") == 0 && w.size() > 5)
        {
            c.wire = wire_kind::pcap;
            c.pcap_path = w.substr(5);
        }
        else
            emu_warn("ignoring invalid SPEAD2_EMU_WIRE=%s", v);
    }
}

/* ------------------------------------------------------------------------ */
/* Counters                                                                 */

struct counters
{
    std::atomic<uint64_t> delivered{0};
    std::atomic<uint64_t> no_flow{0};
    std::atomic<uint64_t> no_buffer{0};
    std::atomic<uint64_t> too_big{0};
    std::atomic<uint64_t> not_ready{0};
    std::atomic<uint64_t> cq_overflow{0};
    std::atomic<uint64_t> fillers{0};
    std::atomic<uint64_t> wqes_completed{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> received{0};
    // Gauges (not counters): receive queues currently able to receive (plain
    // QPs in RTR/RTS, WQs in RDY) and installed flow rules.
    std::atomic<int64_t> rx_ready{0};
    std::atomic<int64_t> flows{0};
    // Gauges of how the application set things up (checked by its tests):
    // MRs registered with IBV_ACCESS_RELAXED_ORDERING, MRs whose memory is
    // madvise(MADV_DONTFORK), plain QPs created with a send queue.
    std::atomic<int64_t> mrs_relaxed{0};
    std::atomic<int64_t> mrs_dontfork{0};
    std::atomic<int64_t> send_queues{0};
    std::atomic<uint64_t> topology_gen{0};
    // Send side (see the README): frames sent and their bytes, frames that
    // failed the header checks, error and flush completions, frames the
    // send wire could not take, scatter/gather entries and the bytes
    // gathered through them, per MR (mr_tx, by start address).
    std::atomic<uint64_t> tx_frames{0};
    std::atomic<uint64_t> tx_bytes{0};
    std::atomic<uint64_t> tx_bad_frames{0};
    std::atomic<uint64_t> tx_errors{0};
    std::atomic<uint64_t> tx_flushed{0};
    std::atomic<uint64_t> tx_wire_errors{0};
    std::atomic<uint64_t> tx_sges{0};
    std::atomic<uint64_t> tx_signaled{0};
    mutable std::mutex tx_mu;        // leaf lock: guards mr_tx
    std::map<uint64_t, std::pair<uint64_t, uint64_t>> mr_tx;   // MR start -> (length, bytes gathered)

    uint64_t signature() const
    {
        return delivered + no_flow + no_buffer + too_big + not_ready + cq_overflow
            + fillers + wqes_completed + errors + received
            + tx_frames + tx_bad_frames + tx_errors + tx_flushed + tx_wire_errors + tx_sges
            + topology_gen * UINT64_C(0x9e3779b97f4a7c15);
    }

    std::string format_tx() const
    {
        char buf[256];
        std::string out;
        snprintf(buf, sizeof(buf),
                 ", \"tx_frames\": %" PRIu64 ", \"tx_bytes\": %" PRIu64 ", \"tx_bad_frames\": %" PRIu64
                 ", \"tx_errors\": %" PRIu64 ", \"tx_flushed\": %" PRIu64 ", \"tx_wire_errors\": %" PRIu64
                 ", \"tx_sges\": %" PRIu64 ", \"tx_signaled\": %" PRIu64 ", \"mr_tx\": [",
                 tx_frames.load(), tx_bytes.load(), tx_bad_frames.load(), tx_errors.load(),
                 tx_flushed.load(), tx_wire_errors.load(), tx_sges.load(), tx_signaled.load());
        out = buf;
        std::lock_guard<std::mutex> lock(tx_mu);
        bool first = true;
        for (const auto &[addr, lb] : mr_tx)
        {
            snprintf(buf, sizeof(buf), "%s[%" PRIu64 ", %" PRIu64 ", %" PRIu64 "]", first ? "" : ", ",
                     addr, lb.first, lb.second);
            out += buf;
            first = false;
        }
        out += "]";
        return out;
    }

    int format(char *buf, size_t len) const
    {
        return snprintf(buf, len,
                        "{\"delivered\": %" PRIu64 ", \"no_flow\": %" PRIu64
                        ", \"no_buffer\": %" PRIu64 ", \"too_big\": %" PRIu64
                        ", \"not_ready\": %" PRIu64 ", \"cq_overflow\": %" PRIu64
                        ", \"fillers\": %" PRIu64 ", \"wqes_completed\": %" PRIu64
                        ", \"errors\": %" PRIu64 ", \"received\": %" PRIu64
                        ", \"rx_ready\": %" PRId64 ", \"flows\": %" PRId64
                        ", \"mrs_relaxed\": %" PRId64 ", \"mrs_dontfork\": %" PRId64
                        ", \"send_queues\": %" PRId64 "%s}",
                        delivered.load(), no_flow.load(), no_buffer.load(), too_big.load(),
                        not_ready.load(), cq_overflow.load(), fillers.load(),
                        wqes_completed.load(), errors.load(), received.load(),
                        rx_ready.load(), flows.load(), mrs_relaxed.load(), mrs_dontfork.load(),
                        send_queues.load(), format_tx().c_str());
    }
};

inline void bump(std::atomic<uint64_t> &c)
{
    c.fetch_add(1, std::memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* pcap reader (classic format only)                                        */

struct pcap_reader
{
    FILE *f = nullptr;
    bool swap = false;
    bool eof = true;

    uint32_t fix(uint32_t v) const { return swap ? __builtin_bswap32(v) : v; }

    bool open(const std::string &path)
    {
        f = fopen(path.c_str(), "rb");
        if (!f)
        {
            emu_warn("cannot open pcap %s: %s", path.c_str(), strerror(errno));
            return false;
        }
        uint32_t hdr[6];
        if (fread(hdr, sizeof(hdr), 1, f) != 1)
        {
            emu_warn("pcap %s: short file header", path.c_str());
            return false;
        }
        switch (hdr[0])
        {
        case 0xa1b2c3d4: case 0xa1b23c4d: swap = false; break;
        case 0xd4c3b2a1: case 0x4d3cb2a1: swap = true; break;
        default:
            emu_warn("pcap %s: not a classic pcap file (magic 0x%08x)", path.c_str(), hdr[0]);
            return false;
        }
        uint32_t linktype = fix(hdr[5]) & 0xffff;
        if (linktype != 1)
        {
            emu_warn("pcap %s: link type %u is not Ethernet (1)", path.c_str(), linktype);
            return false;
        }
        eof = false;
        return true;
    }

    bool next(std::vector<uint8_t> &out)
    {
        if (eof)
            return false;
        uint32_t rec[4];
        if (fread(rec, sizeof(rec), 1, f) != 1)
        {
            eof = true;
            return false;
        }
        uint32_t incl = fix(rec[2]);
        if (incl > (1u << 18))
        {
            emu_warn("pcap: implausible record length %u, stopping replay", incl);
            eof = true;
            return false;
        }
        out.resize(incl);
        if (incl && fread(out.data(), incl, 1, f) != 1)
        {
            emu_warn("pcap: truncated record, stopping replay");
            eof = true;
            return false;
        }
        return true;
    }
};

/* ------------------------------------------------------------------------ */
/* Objects                                                                  */

struct cq_t;

struct context_t
{
    verbs_context vctx;              // must be first: ibv_context is its last member
    std::atomic<int> refs{1};        // 1 for the open + 1 per live object
    // Asynchronous events (ibv_get_async_event); async_fd is a semaphore
    // eventfd in step with the queue.
    std::mutex amu;
    std::deque<ibv_async_event> async_events;
};

struct pd_t
{
    ibv_pd pd;
    context_t *ctx;
    int users = 0;                   // MRs, QPs, WQs (under mu)
};

struct mr_t
{
    ibv_mr mr;
    bool relaxed = false, dontfork = false;
    uint64_t pinned = 0;             // bytes charged against RLIMIT_MEMLOCK
    pd_t *pd;
    uint64_t iova;
    int access;
};

struct channel_t
{
    ibv_comp_channel ch;
    context_t *ctx;
    std::mutex mu;
    std::deque<cq_t *> events;
    int users = 0;                   // CQs (under mu of the global)
};

/* How many send queue entries a QP's polled completions have retired.  A
 * completion generated before a RESET (which frees the whole send queue)
 * must not retire entries again when it is polled afterwards: each carries
 * the generation it was made in. */
struct sq_retired
{
    std::mutex mu;
    uint64_t freed = 0;
    uint64_t gen = 0;
    uint64_t get()
    {
        std::lock_guard<std::mutex> lock(mu);
        return freed;
    }
};

struct completion
{
    completion() = default;
    completion(uint64_t wr_id, uint64_t ts, uint32_t byte_len, uint32_t qp_num, ibv_wc_status status)
        : wr_id(wr_id), ts(ts), byte_len(byte_len), qp_num(qp_num), status(status)
    {
    }
    uint64_t wr_id = 0;
    uint64_t ts = 0;
    uint32_t byte_len = 0;
    uint32_t qp_num = 0;
    ibv_wc_status status = IBV_WC_SUCCESS;
    ibv_wc_opcode opcode = IBV_WC_RECV;
    // Send completions: polling one gives back sq_count send queue entries
    // (this WR and the unsignaled ones before it) to the QP's counter.
    std::shared_ptr<sq_retired> sq_freed;
    uint64_t sq_gen = 0;
    uint32_t sq_count = 0;
};

struct cq_t
{
    ibv_cq_ex cq;                    // must be first; ibv_cq is a prefix of it
    context_t *ctx;
    channel_t *channel;
    uint32_t cap;
    std::unique_ptr<completion[]> ring;
    std::atomic<uint64_t> prod{0};   // written by the producer (holder of mu)
    std::atomic<uint64_t> cons{0};   // written by the consumer
    std::mutex poll_mu;              // consumer side; held from start_poll to end_poll
    uint64_t cursor = 0;
    bool cur_valid = false;
    completion cur{};
    std::atomic<bool> armed{false};
    int users = 0;                   // QPs and WQs (under mu)
    bool broken = false;             // fatal CQ error (overrun): no more completions (under mu)
    // Events handed to the application (ibv_get_cq_event, and
    // ibv_get_async_event for IBV_EVENT_CQ_ERR), under cq.mutex.  As in
    // libibverbs, ibv_destroy_cq waits until they are all acknowledged.
    uint32_t comp_events_reported = 0;
    uint32_t async_events_reported = 0;
    uint64_t pinned = 0;             // bytes charged against RLIMIT_MEMLOCK
};

struct qp_t;
struct wq_t;

struct rx_queue
{
    qp_t *owner_qp = nullptr;        // exactly one of these is set
    wq_t *owner_wq = nullptr;
    uint64_t pinned = 0;             // bytes of the ring charged against RLIMIT_MEMLOCK
    bool striding = false;
    cq_t *cq = nullptr;
    pd_t *pd = nullptr;
    uint32_t qp_num = 0;             // reported in completions

    // Plain receive queue (QP or non-striding WQ), filled by post_recv.
    std::mutex rmu;
    uint32_t rcap = 0;
    uint32_t rmax_sge = 0;
    std::vector<uint64_t> r_wr_id;
    std::vector<uint32_t> r_nsge;
    std::vector<ibv_sge> r_sge;
    uint64_t rhead = 0, rtail = 0;

    // Striding WQ (all consumer state under mu).
    uint32_t stride_log = 0, stride_size = 0, strides_per_wqe = 0;
    uint32_t wqe_cnt = 0;
    mlx5_mprq_wqe *buf = nullptr;
    uint32_t *dbrec = nullptr;
    uint64_t consumed = 0;           // WQEs fully consumed (sequence number of the current one)
    bool have_cur = false;
    uint32_t cur_pos = 0;            // strides used in the current WQE
    uint64_t cur_addr = 0;
    uint32_t cur_lkey = 0, cur_bytes = 0;
    bool warned_overpost = false;
};

struct qp_t;

struct wq_t
{
    ibv_wq wq;
    context_t *ctx;
    rx_queue rx;
    int users = 0;                   // indirection tables
};

struct ind_table_t
{
    ibv_rwq_ind_table t;
    context_t *ctx;
    std::vector<wq_t *> wqs;
    int users = 0;                   // QPs
};

struct qp_t
{
    ibv_qp qp;
    context_t *ctx;
    pd_t *pd;
    bool rss = false;
    rx_queue rx;                     // plain QPs only
    cq_t *send_cq = nullptr;
    bool has_send_queue = false;
    bool sig_all = false;            // sq_sig_all: every send WR completes
    bool has_recv_queue = true;      // plain QPs: max_recv_wr > 0 (a send-only QP has none)
    // Send queue (under the device mutex, except sq_freed which the poller bumps).
    uint32_t sq_cap = 0, sq_max_sge = 0;
    uint64_t sq_posted = 0;          // WRs accepted
    uint64_t sq_reported = 0;        // WRs covered by completions generated so far
    std::shared_ptr<sq_retired> sq_freed = std::make_shared<sq_retired>();
    uint64_t sq_pinned = 0;
    ind_table_t *ind = nullptr;
    uint64_t hash_fields = 0;
    int users = 0;                   // flows
};

struct flow_t
{
    ibv_flow flow;
    qp_t *qp;
    uint16_t priority;
    uint64_t seq;
    bool has_eth = false, has_ip = false, has_l4 = false;
    uint8_t l4_proto = 0;
    ibv_flow_eth_filter eth_val{}, eth_mask{};
    ibv_flow_ipv4_ext_filter ip_val{}, ip_mask{};
    ibv_flow_tcp_udp_filter l4_val{}, l4_mask{};
};

struct cm_id_t
{
    rdma_cm_id id;
};

/* ------------------------------------------------------------------------ */
/* Global state                                                             */

struct global
{
    config cfg;
    ibv_device device;
    counters stats;

    std::mutex mu;                   // device mutex, see top of file
    std::vector<flow_t *> flows;     // sorted by (priority, seq)
    std::unordered_map<uint32_t, mr_t *> mrs;
    int rx_queues = 0;               // plain QPs + WQs alive
    int objects = 0;
    uint32_t next_key = 1;
    uint32_t next_num = 0x120;
    uint64_t next_flow_seq = 0;
    context_t *cm_ctx = nullptr;

    // The wire
    int udp_fd = -1;
    std::vector<uint8_t> udp_bufs;
    pcap_reader pcap;
    std::vector<uint8_t> pcap_frame;
    bool pcap_pending = false;
    bool pcap_started = false;       // a steered queue was ready with a buffer posted
    uint64_t pcap_sent = 0;
    uint64_t pcap_base_n = 0;
    uint64_t pcap_base_ns = 0;
    uint64_t frames_to_queues = 0;   // for SPEAD2_EMU_ERROR_FRAMES / CQ_ERROR_AT
    uint64_t send_wrs = 0;           // for SPEAD2_EMU_SEND_ERROR_AT
    uint64_t pinned = 0;             // bytes pinned by MRs and queue buffers (under mu)

    // The NIC thread
    std::mutex thread_mu;
    std::thread nic;
    std::atomic<bool> nic_running{false};
    std::atomic<bool> stop{false};
    int stop_fd = -1;

    std::mutex stats_file_mu;
    std::atomic<uint64_t> written_sig{~UINT64_C(0)};

    // The send wire
    int send_fd = -1;
    FILE *send_pcap = nullptr;
};

global *g = nullptr;
std::once_flag g_once;

void write_stats_file();

void init_global()
{
    global *gl = new global();
    load_config(gl->cfg);
    memset(&gl->device, 0, sizeof(gl->device));
    gl->device.node_type = IBV_NODE_CA;
    gl->device.transport_type = IBV_TRANSPORT_IB;
    snprintf(gl->device.name, sizeof(gl->device.name), "emu0");
    snprintf(gl->device.dev_name, sizeof(gl->device.dev_name), "uverbs0");
    snprintf(gl->device.dev_path, sizeof(gl->device.dev_path), "/sys/class/infiniband_verbs/uverbs0");
    snprintf(gl->device.ibdev_path, sizeof(gl->device.ibdev_path), "/sys/class/infiniband/emu0");
    gl->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

    if (gl->cfg.wire == wire_kind::udp)
    {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0)
        {
            int size = 16 << 20;
            if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
            if (bind(fd, reinterpret_cast<const sockaddr *>(&gl->cfg.udp_addr),
                     sizeof(gl->cfg.udp_addr)) != 0)
            {
                char a[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &gl->cfg.udp_addr.sin_addr, a, sizeof(a));
                emu_warn("cannot bind wire socket %s:%u: %s (no frames will arrive)",
                         a, ntohs(gl->cfg.udp_addr.sin_port), strerror(errno));
                close(fd);
                fd = -1;
            }
        }
        gl->udp_fd = fd;
    }
    else if (gl->cfg.wire == wire_kind::pcap)
    {
        if (!gl->pcap.open(gl->cfg.pcap_path))
            emu_warn("pcap wire disabled");
    }
    if (gl->cfg.send_wire == wire_kind::udp)
    {
        gl->send_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (gl->send_fd < 0)
            emu_warn("cannot create the send wire socket: %s (sent frames are lost)", strerror(errno));
    }
    else if (gl->cfg.send_wire == wire_kind::pcap)
    {
        gl->send_pcap = fopen(gl->cfg.send_pcap_path.c_str(), "wb");
        if (!gl->send_pcap)
            emu_warn("cannot open %s: %s (sent frames are lost)", gl->cfg.send_pcap_path.c_str(), strerror(errno));
        else
        {
            // Classic pcap, nanosecond timestamps, link type Ethernet.
            uint32_t hdr[6] = {0xa1b23c4d, 0, 0, 0, 262144, 1};
            uint16_t version[2] = {2, 4};
            memcpy(&hdr[1], version, sizeof(version));
            if (fwrite(hdr, sizeof(hdr), 1, gl->send_pcap) != 1)
                emu_warn("cannot write %s", gl->cfg.send_pcap_path.c_str());
            fflush(gl->send_pcap);
        }
    }
    g = gl;
    write_stats_file();    // exists (all zero) from the first call on
}

global &G()
{
    std::call_once(g_once, init_global);
    return *g;
}

uint64_t now_ns()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

uint64_t wall_ns()
{
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

/* Waits until the stop eventfd fires or the timeout passes.  Returns true if
 * stop was requested. */
bool wait_stop(uint64_t timeout_ns)
{
    global &gl = *g;
    if (gl.stop.load())
        return true;
    pollfd pfd{gl.stop_fd, POLLIN, 0};
    timespec ts{time_t(timeout_ns / 1000000000u), long(timeout_ns % 1000000000u)};
    ppoll(&pfd, 1, &ts, nullptr);
    return gl.stop.load();
}

inline context_t *to_ctx(ibv_context *c)
{
    return reinterpret_cast<context_t *>(
        reinterpret_cast<char *>(c) - offsetof(verbs_context, context));
}
inline pd_t *to_pd(ibv_pd *p) { return reinterpret_cast<pd_t *>(p); }
inline mr_t *to_mr(ibv_mr *p) { return reinterpret_cast<mr_t *>(p); }
inline channel_t *to_channel(ibv_comp_channel *p) { return reinterpret_cast<channel_t *>(p); }
inline cq_t *to_cq(ibv_cq *p) { return reinterpret_cast<cq_t *>(p); }
inline cq_t *to_cq(ibv_cq_ex *p) { return reinterpret_cast<cq_t *>(p); }
inline qp_t *to_qp(ibv_qp *p) { return reinterpret_cast<qp_t *>(p); }
inline wq_t *to_wq(ibv_wq *p) { return reinterpret_cast<wq_t *>(p); }
inline ind_table_t *to_ind(ibv_rwq_ind_table *p) { return reinterpret_cast<ind_table_t *>(p); }
inline flow_t *to_flow(ibv_flow *p) { return reinterpret_cast<flow_t *>(p); }

bool is_our_context(ibv_context *c)
{
    return c && c->device == &g->device
        && c->abi_compat == __VERBS_ABI_IS_EXTENDED;
}

void ctx_ref(context_t *c)
{
    c->refs.fetch_add(1);
}

void ctx_unref(context_t *c)
{
    if (c->refs.fetch_sub(1) == 1)
    {
        if (c->vctx.context.async_fd >= 0)
            close(c->vctx.context.async_fd);
        pthread_mutex_destroy(&c->vctx.context.mutex);
        delete c;
    }
}

/* Locked memory, as the kernel accounts it (ib_umem_get): MRs and the
 * buffers of CQs and receive queues are pinned, and the process total may
 * not exceed RLIMIT_MEMLOCK (read at each call) unless it has CAP_IPC_LOCK.
 * Device mutex held. */
bool has_cap_ipc_lock()
{
    __user_cap_header_struct header{};
    __user_cap_data_struct data[2]{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    if (syscall(SYS_capget, &header, data) != 0)
        return false;
    return data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK);
}

bool charge_pinned(uint64_t bytes)
{
    global &gl = *g;
    bytes = (bytes + 4095) / 4096 * 4096;
    rlimit lim{};
    if (getrlimit(RLIMIT_MEMLOCK, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY
        && gl.pinned + bytes > lim.rlim_cur && !has_cap_ipc_lock())
    {
        EMU_LOG("pinning %" PRIu64 " more bytes would exceed RLIMIT_MEMLOCK (%" PRIu64 " pinned, limit %" PRIu64 "): ENOMEM",
                bytes, gl.pinned, uint64_t(lim.rlim_cur));
        return false;
    }
    gl.pinned += bytes;
    return true;
}

void uncharge_pinned(uint64_t bytes)
{
    global &gl = *g;
    bytes = (bytes + 4095) / 4096 * 4096;
    gl.pinned -= std::min(gl.pinned, bytes);
}

/* Generic failure helper for functions returning a pointer and errno. */
template<typename T>
T *fail(int err)
{
    errno = err;
    return nullptr;
}

/* ------------------------------------------------------------------------ */
/* NIC thread start / stop                                                  */

void nic_main();

void ensure_nic_running()
{
    global &gl = *g;
    std::lock_guard<std::mutex> tl(gl.thread_mu);
    if (gl.nic_running.load())
        return;
    uint64_t junk;
    while (read(gl.stop_fd, &junk, sizeof(junk)) == sizeof(junk)) {}
    gl.stop = false;
    gl.nic = std::thread(nic_main);
    gl.nic_running = true;
    EMU_LOG("NIC thread started");
}

void stop_nic_locked()
{
    global &gl = *g;
    if (!gl.nic_running.load())
        return;
    gl.stop = true;
    uint64_t one = 1;
    if (write(gl.stop_fd, &one, sizeof(one)) != sizeof(one)) {}
    gl.nic.join();
    gl.nic_running = false;
    EMU_LOG("NIC thread stopped");
}

void maybe_stop_nic()
{
    global &gl = *g;
    std::lock_guard<std::mutex> tl(gl.thread_mu);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.rx_queues > 0)
            return;
    }
    stop_nic_locked();
}

/* ------------------------------------------------------------------------ */
/* Stats file                                                               */

void write_stats_file()
{
    global &gl = *g;
    if (gl.cfg.stats_path.empty())
        return;
    std::lock_guard<std::mutex> lock(gl.stats_file_mu);
    uint64_t sig = gl.stats.signature();
    std::vector<char> buf(4096);
    int n = gl.stats.format(buf.data(), buf.size());
    if (n >= 0 && size_t(n) >= buf.size())
    {
        buf.resize(size_t(n) + 1);
        n = gl.stats.format(buf.data(), buf.size());
    }
    std::string tmp = gl.cfg.stats_path + ".tmp." + std::to_string(getpid());
    FILE *f = fopen(tmp.c_str(), "w");
    if (!f)
    {
        EMU_LOG("cannot write %s: %s", tmp.c_str(), strerror(errno));
        return;
    }
    bool ok = fwrite(buf.data(), 1, size_t(n), f) == size_t(n) && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp.c_str(), gl.cfg.stats_path.c_str()) != 0)
    {
        EMU_LOG("cannot write %s: %s", gl.cfg.stats_path.c_str(), strerror(errno));
        unlink(tmp.c_str());
        return;
    }
    gl.written_sig = sig;
}

/* Called by application threads after they changed counters: the NIC thread
 * (if any) flushes periodically, otherwise write now. */
void stats_changed_offthread()
{
    global &gl = *g;
    if (!gl.nic_running.load() && gl.stats.signature() != gl.written_sig.load())
        write_stats_file();
}

/* After a change of the receive topology (queue state, flows, queue
 * destruction) the file is rewritten synchronously, so that a test can wait
 * for "rx_ready"/"flows" before it starts sending. */
void topology_changed()
{
    global &gl = *g;
    gl.stats.topology_gen.fetch_add(1);
    write_stats_file();
}

/* ------------------------------------------------------------------------ */
/* Completion queues                                                        */

void channel_post(channel_t *ch, cq_t *cq)
{
    {
        std::lock_guard<std::mutex> lock(ch->mu);
        ch->events.push_back(cq);
    }
    uint64_t one = 1;
    if (write(ch->ch.fd, &one, sizeof(one)) != sizeof(one))
        emu_warn("cannot signal completion channel: %s", strerror(errno));
}

bool cq_has_space(cq_t *cq, uint32_t n)
{
    uint64_t used = cq->prod.load(std::memory_order_relaxed)
        - cq->cons.load(std::memory_order_acquire);
    return used + n <= cq->cap;
}

/* Producer side: only called with the device mutex held, after
 * cq_has_space(). */
void cq_push(cq_t *cq, const completion &c)
{
    uint64_t p = cq->prod.load(std::memory_order_relaxed);
    cq->ring[p % cq->cap] = c;
    cq->prod.store(p + 1, std::memory_order_release);
    if (cq->armed.load(std::memory_order_acquire)
        && cq->armed.exchange(false, std::memory_order_acq_rel) && cq->channel)
        channel_post(cq->channel, cq);
}

int cq_poll(ibv_cq *ibcq, int num_entries, ibv_wc *wc)
{
    cq_t *cq = to_cq(ibcq);
    if (num_entries < 0)
        return -EINVAL;
    std::lock_guard<std::mutex> lock(cq->poll_mu);
    uint64_t c = cq->cons.load(std::memory_order_relaxed);
    uint64_t p = cq->prod.load(std::memory_order_acquire);
    uint64_t n = std::min<uint64_t>(uint64_t(num_entries), p - c);
    for (uint64_t i = 0; i < n; i++)
    {
        const completion &e = cq->ring[(c + i) % cq->cap];
        ibv_wc &w = wc[i];
        memset(&w, 0, sizeof(w));
        w.wr_id = e.wr_id;
        w.status = e.status;
        w.opcode = e.opcode;
        w.byte_len = e.byte_len;
        w.qp_num = e.qp_num;
        if (e.sq_freed)
        {
            std::lock_guard<std::mutex> lock(e.sq_freed->mu);
            if (e.sq_freed->gen == e.sq_gen)
                e.sq_freed->freed += e.sq_count;
        }
    }
    cq->cons.store(c + n, std::memory_order_release);
    return int(n);
}

int cq_req_notify(ibv_cq *ibcq, int solicited_only)
{
    cq_t *cq = to_cq(ibcq);
    (void) solicited_only;   // every receive completion counts as solicited here
    cq->armed.store(true, std::memory_order_release);
    return 0;
}

void cq_load_current(cq_t *cq)
{
    cq->cur = cq->ring[cq->cursor % cq->cap];
    cq->cur_valid = true;
    cq->cq.status = cq->cur.status;
    cq->cq.wr_id = cq->cur.wr_id;
}

int cq_start_poll(ibv_cq_ex *x, ibv_poll_cq_attr *attr)
{
    cq_t *cq = to_cq(x);
    if (attr && attr->comp_mask)
        return EINVAL;
    cq->poll_mu.lock();
    uint64_t c = cq->cons.load(std::memory_order_relaxed);
    if (c == cq->prod.load(std::memory_order_acquire))
    {
        cq->cur_valid = false;
        cq->poll_mu.unlock();
        return ENOENT;
    }
    cq->cursor = c;
    cq_load_current(cq);
    return 0;
}

int cq_next_poll(ibv_cq_ex *x)
{
    cq_t *cq = to_cq(x);
    if (!cq->cur_valid)
        return ENOENT;
    cq->cursor++;
    if (cq->cursor == cq->prod.load(std::memory_order_acquire))
    {
        cq->cur_valid = false;
        return ENOENT;
    }
    cq_load_current(cq);
    return 0;
}

void cq_end_poll(ibv_cq_ex *x)
{
    cq_t *cq = to_cq(x);
    uint64_t done = cq->cursor + (cq->cur_valid ? 1 : 0);
    cq->cur_valid = false;
    cq->cons.store(done, std::memory_order_release);
    cq->poll_mu.unlock();
}

ibv_wc_opcode cq_read_opcode(ibv_cq_ex *) { return IBV_WC_RECV; }
uint32_t cq_read_vendor_err(ibv_cq_ex *) { return 0; }
uint32_t cq_read_byte_len(ibv_cq_ex *x) { return to_cq(x)->cur.byte_len; }
__be32 cq_read_imm_data(ibv_cq_ex *) { return 0; }
uint32_t cq_read_qp_num(ibv_cq_ex *x) { return to_cq(x)->cur.qp_num; }
uint32_t cq_read_src_qp(ibv_cq_ex *) { return 0; }
unsigned int cq_read_wc_flags(ibv_cq_ex *) { return 0; }
uint32_t cq_read_slid(ibv_cq_ex *) { return 0; }
uint8_t cq_read_sl(ibv_cq_ex *) { return 0; }
uint8_t cq_read_dlid_path_bits(ibv_cq_ex *) { return 0; }
uint64_t cq_read_completion_ts(ibv_cq_ex *x) { return to_cq(x)->cur.ts; }
uint16_t cq_read_cvlan(ibv_cq_ex *) { return 0; }
uint32_t cq_read_flow_tag(ibv_cq_ex *) { return 0; }
void cq_read_tm_info(ibv_cq_ex *, ibv_wc_tm_info *tm) { memset(tm, 0, sizeof(*tm)); }
uint64_t cq_read_wallclock_ns(ibv_cq_ex *x) { return to_cq(x)->cur.ts; }

cq_t *create_cq_impl(ibv_context *context, int cqe, void *cq_context,
                     ibv_comp_channel *channel, int comp_vector, bool extended)
{
    global &gl = G();
    if (!is_our_context(context))
        return fail<cq_t>(EINVAL);
    if (cqe < 1 || cqe > gl.cfg.max_cqe)
        return fail<cq_t>(EINVAL);
    if (comp_vector < 0 || comp_vector >= num_comp_vectors)
        return fail<cq_t>(EINVAL);
    channel_t *ch = channel ? to_channel(channel) : nullptr;
    if (ch && ch->ch.context != context)
        return fail<cq_t>(EINVAL);
    std::unique_ptr<cq_t> cq(new cq_t());
    try
    {
        cq->ring.reset(new completion[size_t(cqe)]);
    }
    catch (std::bad_alloc &)
    {
        return fail<cq_t>(ENOMEM);
    }
    memset(&cq->cq, 0, sizeof(cq->cq));
    context_t *ctx = to_ctx(context);
    cq->ctx = ctx;
    cq->channel = ch;
    cq->cap = uint32_t(cqe);
    ibv_cq_ex &x = cq->cq;
    x.context = context;
    x.channel = channel;
    x.cq_context = cq_context;
    x.cqe = cqe;
    pthread_mutex_init(&x.mutex, nullptr);
    pthread_cond_init(&x.cond, nullptr);
    x.start_poll = cq_start_poll;
    x.next_poll = cq_next_poll;
    x.end_poll = cq_end_poll;
    x.read_opcode = cq_read_opcode;
    x.read_vendor_err = cq_read_vendor_err;
    x.read_byte_len = cq_read_byte_len;
    x.read_imm_data = cq_read_imm_data;
    x.read_qp_num = cq_read_qp_num;
    x.read_src_qp = cq_read_src_qp;
    x.read_wc_flags = cq_read_wc_flags;
    x.read_slid = cq_read_slid;
    x.read_sl = cq_read_sl;
    x.read_dlid_path_bits = cq_read_dlid_path_bits;
    x.read_completion_ts = cq_read_completion_ts;
    x.read_cvlan = cq_read_cvlan;
    x.read_flow_tag = cq_read_flow_tag;
    x.read_tm_info = cq_read_tm_info;
    x.read_completion_wallclock_ns = cq_read_wallclock_ns;
    (void) extended;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.objects >= max_objects)
            return fail<cq_t>(ENOMEM);
        cq->pinned = uint64_t(cqe) * 64;    // one 64-byte CQE each, as mlx5
        if (!charge_pinned(cq->pinned))
            return fail<cq_t>(ENOMEM);
        x.handle = gl.next_num++;
        gl.objects++;
        if (ch)
        {
            ch->users++;
            ch->ch.refcnt++;
        }
    }
    ctx_ref(ctx);
    return cq.release();
}

int destroy_cq_impl(ibv_cq *ibcq)
{
    global &gl = G();
    cq_t *cq = to_cq(ibcq);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (cq->users > 0)
        {
            emu_warn("ibv_destroy_cq: CQ still used by %d QP/WQ(s): EBUSY", cq->users);
            return EBUSY;
        }
        if (cq->channel)
        {
            channel_t *ch = cq->channel;
            std::lock_guard<std::mutex> clock(ch->mu);
            size_t before = ch->events.size();
            ch->events.erase(std::remove(ch->events.begin(), ch->events.end(), cq),
                             ch->events.end());
            // Keep the semaphore eventfd in step with the queue.
            for (size_t i = ch->events.size(); i < before; i++)
            {
                uint64_t v;
                if (read(ch->ch.fd, &v, sizeof(v)) != sizeof(v))
                    break;
            }
            ch->users--;
            ch->ch.refcnt--;
        }
        {
            // Asynchronous events not yet read that name this CQ go with it.
            context_t *c = cq->ctx;
            std::lock_guard<std::mutex> alock(c->amu);
            size_t before = c->async_events.size();
            c->async_events.erase(
                std::remove_if(c->async_events.begin(), c->async_events.end(),
                               [cq](const ibv_async_event &e) {
                                   return e.event_type == IBV_EVENT_CQ_ERR
                                       && e.element.cq == ibv_cq_ex_to_cq(&cq->cq);
                               }),
                c->async_events.end());
            for (size_t i = c->async_events.size(); i < before; i++)
            {
                uint64_t v;
                if (read(c->vctx.context.async_fd, &v, sizeof(v)) != sizeof(v))
                    break;
            }
        }
        uncharge_pinned(cq->pinned);
        gl.objects--;
    }
    // Like libibverbs: block until every event the application has taken
    // for this CQ is acknowledged (ibv_ack_cq_events / ibv_ack_async_event).
    // An application that never acknowledges hangs here, as it would on
    // real hardware; say so once.
    pthread_mutex_lock(&cq->cq.mutex);
    bool warned = false;
    while (cq->cq.comp_events_completed != cq->comp_events_reported
           || cq->cq.async_events_completed != cq->async_events_reported)
    {
        timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 1;
        if (pthread_cond_timedwait(&cq->cq.cond, &cq->cq.mutex, &deadline) == ETIMEDOUT && !warned)
        {
            emu_warn("ibv_destroy_cq: waiting for %u completion and %u async event(s) to be acknowledged "
                     "(as libibverbs does, this blocks until ibv_ack_cq_events / ibv_ack_async_event)",
                     cq->comp_events_reported - cq->cq.comp_events_completed,
                     cq->async_events_reported - cq->cq.async_events_completed);
            warned = true;
        }
    }
    pthread_mutex_unlock(&cq->cq.mutex);
    pthread_mutex_destroy(&cq->cq.mutex);
    pthread_cond_destroy(&cq->cq.cond);
    context_t *ctx = cq->ctx;
    delete cq;
    ctx_unref(ctx);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Frame processing (device mutex held)                                     */

struct headers
{
    const uint8_t *dst_mac = nullptr;
    const uint8_t *src_mac = nullptr;
    uint16_t ethertype = 0;      // network order, after an optional 802.1Q tag
    uint16_t vlan = 0;           // network order TCI, 0 if untagged
    bool ipv4 = false;
    uint32_t src_ip = 0, dst_ip = 0;   // network order
    uint8_t proto = 0, tos = 0, ttl = 0;
    bool l4 = false;
    uint16_t src_port = 0, dst_port = 0;   // network order
};

bool parse_frame(const uint8_t *p, size_t len, headers &h)
{
    if (len < 14)
        return false;
    h.dst_mac = p;
    h.src_mac = p + 6;
    size_t off = 12;
    uint16_t et;
    memcpy(&et, p + off, 2);
    off += 2;
    if (et == htons(0x8100) && len >= off + 4)
    {
        memcpy(&h.vlan, p + off, 2);
        memcpy(&et, p + off + 2, 2);
        off += 4;
    }
    h.ethertype = et;
    if (et == htons(0x0800) && len >= off + 20)
    {
        const uint8_t *ip = p + off;
        size_t ihl = size_t(ip[0] & 0xf) * 4;
        if ((ip[0] >> 4) == 4 && ihl >= 20 && len >= off + ihl)
        {
            h.ipv4 = true;
            h.tos = ip[1];
            h.ttl = ip[8];
            h.proto = ip[9];
            memcpy(&h.src_ip, ip + 12, 4);
            memcpy(&h.dst_ip, ip + 16, 4);
            uint16_t frag;
            memcpy(&frag, ip + 6, 2);
            bool first_fragment = (ntohs(frag) & 0x1fff) == 0;
            if (first_fragment && (h.proto == IPPROTO_UDP || h.proto == IPPROTO_TCP)
                && len >= off + ihl + 4)
            {
                h.l4 = true;
                memcpy(&h.src_port, ip + ihl, 2);
                memcpy(&h.dst_port, ip + ihl + 2, 2);
            }
        }
    }
    return true;
}

template<typename T>
bool masked_eq(T frame, T val, T mask)
{
    return (frame & mask) == (val & mask);
}

bool flow_matches(const flow_t &f, const headers &h)
{
    if (f.has_eth)
    {
        for (int i = 0; i < 6; i++)
        {
            if (!masked_eq(h.dst_mac[i], f.eth_val.dst_mac[i], f.eth_mask.dst_mac[i])
                || !masked_eq(h.src_mac[i], f.eth_val.src_mac[i], f.eth_mask.src_mac[i]))
                return false;
        }
        if (!masked_eq(h.ethertype, f.eth_val.ether_type, f.eth_mask.ether_type)
            || !masked_eq(h.vlan, f.eth_val.vlan_tag, f.eth_mask.vlan_tag))
            return false;
    }
    if (f.has_ip)
    {
        if (!h.ipv4
            || !masked_eq(h.src_ip, f.ip_val.src_ip, f.ip_mask.src_ip)
            || !masked_eq(h.dst_ip, f.ip_val.dst_ip, f.ip_mask.dst_ip)
            || !masked_eq(h.proto, f.ip_val.proto, f.ip_mask.proto)
            || !masked_eq(h.tos, f.ip_val.tos, f.ip_mask.tos)
            || !masked_eq(h.ttl, f.ip_val.ttl, f.ip_mask.ttl))
            return false;
    }
    if (f.has_l4)
    {
        if (!h.l4 || h.proto != f.l4_proto
            || !masked_eq(h.dst_port, f.l4_val.dst_port, f.l4_mask.dst_port)
            || !masked_eq(h.src_port, f.l4_val.src_port, f.l4_mask.src_port))
            return false;
    }
    return true;
}

/* The MR of @a pd that (lkey, addr, len) lies in, or nullptr (a protection
 * error).  Enough for the NIC to read (a send's gather source). */
mr_t *translate_read(pd_t *pd, uint32_t lkey, uint64_t addr, uint64_t len)
{
    global &gl = *g;
    auto it = gl.mrs.find(lkey);
    if (it == gl.mrs.end())
        return nullptr;
    mr_t *mr = it->second;
    if (mr->pd != pd || addr < mr->iova)
        return nullptr;
    uint64_t off = addr - mr->iova;
    if (off > mr->mr.length || len > mr->mr.length - off)
        return nullptr;
    return mr;
}

/* Translates (lkey, addr, len) to host memory the NIC may write (a receive
 * buffer), or nullptr on a protection error. */
uint8_t *translate(pd_t *pd, uint32_t lkey, uint64_t addr, uint64_t len)
{
    mr_t *mr = translate_read(pd, lkey, addr, len);
    if (!mr || !(mr->access & IBV_ACCESS_LOCAL_WRITE))
        return nullptr;
    return static_cast<uint8_t *>(mr->mr.addr) + (addr - mr->iova);
}

enum class result { delivered, dropped, retry };

result drop(std::atomic<uint64_t> &counter)
{
    bump(counter);
    return result::dropped;
}

/* Queues an asynchronous event on the context (any thread). */
void post_async_event(context_t *ctx, const ibv_async_event &ev)
{
    {
        std::lock_guard<std::mutex> lock(ctx->amu);
        ctx->async_events.push_back(ev);
    }
    uint64_t one = 1;
    if (write(ctx->vctx.context.async_fd, &one, sizeof(one)) != sizeof(one))
        emu_warn("cannot signal the async event fd: %s", strerror(errno));
}

/* What an mlx5 NIC reports in byte_len of an error CQE: nothing meaningful
 * (the field is reserved).  Deliberately plausible-looking junk, so that an
 * application that counts strides from it goes wrong visibly. */
uint32_t junk_byte_len(uint64_t seq)
{
    return 0x00400000u ^ uint32_t(seq * 2654435761u);
}

/* A receive error other than a local length error moves the queue to the
 * error state, as on mlx5: no more frames are received until the
 * application resets it (device mutex held). */
void rx_enter_error(rx_queue &rx);

/* A fatal CQ error (overrun): the CQ produces nothing more and
 * IBV_EVENT_CQ_ERR is raised, once (device mutex held). */
void cq_fail(cq_t *cq)
{
    if (cq->broken)
        return;
    cq->broken = true;
    emu_warn("CQ %u overrun: fatal CQ error (IBV_EVENT_CQ_ERR)", cq->cq.handle);
    ibv_async_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.element.cq = ibv_cq_ex_to_cq(&cq->cq);
    ev.event_type = IBV_EVENT_CQ_ERR;
    post_async_event(cq->ctx, ev);
}

/* A receive queue's CQ overran: the CQ fails and the queue goes to ERR. */
void cq_break(cq_t *cq, rx_queue &rx)
{
    cq_fail(cq);
    rx_enter_error(rx);
}

/* Fault injection: what happens to the next frame that reaches a queue. */
enum class fault { none, error_cqe, cq_error };

fault next_fault()
{
    global &gl = *g;
    uint64_t n = ++gl.frames_to_queues;
    if (gl.cfg.cq_error_at && n == gl.cfg.cq_error_at)
        return fault::cq_error;
    if (gl.cfg.error_frames_from && n >= gl.cfg.error_frames_from)
        return fault::error_cqe;
    for (uint64_t e : gl.cfg.error_frames)
        if (e == n)
            return fault::error_cqe;
    return fault::none;
}

result deliver_plain(rx_queue &rx, const uint8_t *data, size_t len, bool lossless)
{
    global &gl = *g;
    uint64_t wr_id;
    uint32_t nsge;
    ibv_sge sge[max_sge];
    if (rx.cq->broken)
        return drop(gl.stats.cq_overflow);
    {
        std::unique_lock<std::mutex> lock(rx.rmu);
        if (rx.rhead == rx.rtail)
            return lossless ? result::retry : drop(gl.stats.no_buffer);
        if (!cq_has_space(rx.cq, 1))
        {
            if (lossless)
                return result::retry;
            lock.unlock();
            cq_break(rx.cq, rx);
            return drop(gl.stats.cq_overflow);
        }
        uint32_t slot = uint32_t(rx.rtail % rx.rcap);
        wr_id = rx.r_wr_id[slot];
        nsge = rx.r_nsge[slot];
        memcpy(sge, &rx.r_sge[size_t(slot) * rx.rmax_sge], nsge * sizeof(ibv_sge));
        rx.rtail++;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < nsge; i++)
        total += sge[i].length;
    ibv_wc_status status = IBV_WC_SUCCESS;
    uint8_t *dst[max_sge];
    fault f = next_fault();
    if (f == fault::cq_error)
    {
        cq_break(rx.cq, rx);
        return drop(gl.stats.cq_overflow);
    }
    if (f == fault::error_cqe)
        status = IBV_WC_LOC_QP_OP_ERR;
    else if (len > total)
        status = IBV_WC_LOC_LEN_ERR;
    else
    {
        size_t remain = len;
        for (uint32_t i = 0; i < nsge && remain > 0; i++)
        {
            size_t chunk = std::min<size_t>(remain, sge[i].length);
            dst[i] = translate(rx.pd, sge[i].lkey, sge[i].addr, chunk);
            if (!dst[i])
            {
                status = IBV_WC_LOC_PROT_ERR;
                break;
            }
            remain -= chunk;
        }
    }
    if (status == IBV_WC_SUCCESS)
    {
        size_t off = 0;
        for (uint32_t i = 0; i < nsge && off < len; i++)
        {
            size_t chunk = std::min<size_t>(len - off, sge[i].length);
            memcpy(dst[i], data + off, chunk);
            off += chunk;
        }
        bump(gl.stats.delivered);
    }
    else
        bump(gl.stats.errors);
    const bool ok = status == IBV_WC_SUCCESS;
    cq_push(rx.cq, completion{wr_id, wall_ns(), ok ? uint32_t(len) : junk_byte_len(wr_id), rx.qp_num, status});
    if (!ok && status != IBV_WC_LOC_LEN_ERR)
        rx_enter_error(rx);
    return result::delivered;
}

void complete_wqe(rx_queue &rx)
{
    rx.consumed++;
    rx.have_cur = false;
    rx.cur_pos = 0;
    bump(g->stats.wqes_completed);
}

result deliver_striding(rx_queue &rx, const uint8_t *data, size_t len, bool lossless)
{
    global &gl = *g;
    if (len > size_t(rx.strides_per_wqe) * rx.stride_size || len > 0xffff)
        return drop(gl.stats.too_big);
    uint32_t need = uint32_t((len + rx.stride_size - 1) >> rx.stride_log);
    if (rx.cq->broken)
        return drop(gl.stats.cq_overflow);
    while (true)
    {
        if (!rx.have_cur)
        {
            uint32_t db = be32toh(__atomic_load_n(&rx.dbrec[MLX5_RCV_DBR], __ATOMIC_ACQUIRE)) & 0xffff;
            uint32_t posted = (db - uint32_t(rx.consumed)) & 0xffff;
            if (posted > rx.wqe_cnt && !rx.warned_overpost)
            {
                emu_warn("striding WQ %u: doorbell says %u WQEs posted but the ring has only %u",
                         rx.qp_num, posted, rx.wqe_cnt);
                rx.warned_overpost = true;
            }
            if (posted == 0)
                return lossless ? result::retry : drop(gl.stats.no_buffer);
            const mlx5_mprq_wqe &wqe = rx.buf[rx.consumed & (rx.wqe_cnt - 1)];
            mlx5_wqe_data_seg dseg;
            memcpy(&dseg, &wqe.dseg, sizeof(dseg));
            rx.cur_bytes = be32toh(dseg.byte_count);
            rx.cur_lkey = be32toh(dseg.lkey);
            rx.cur_addr = be64toh(dseg.addr);
            rx.cur_pos = 0;
            rx.have_cur = true;
        }
        if (!cq_has_space(rx.cq, 1))
        {
            if (lossless)
                return result::retry;
            cq_break(rx.cq, rx);
            return drop(gl.stats.cq_overflow);
        }
        if (rx.cur_pos + need > rx.strides_per_wqe)
        {
            // Doesn't fit in what is left of this WQE: filler for the rest.
            uint32_t remaining = rx.strides_per_wqe - rx.cur_pos;
            cq_push(rx.cq, completion{rx.consumed, wall_ns(), (remaining << 16) | filler_flag,
                                      rx.qp_num, IBV_WC_SUCCESS});
            bump(gl.stats.fillers);
            complete_wqe(rx);
            continue;
        }
        uint64_t offset = uint64_t(rx.cur_pos) * rx.stride_size;
        ibv_wc_status status = IBV_WC_SUCCESS;
        uint8_t *dst = nullptr;
        fault f = next_fault();
        if (f == fault::cq_error)
        {
            cq_break(rx.cq, rx);
            return drop(gl.stats.cq_overflow);
        }
        if (f == fault::error_cqe)
            status = IBV_WC_LOC_QP_OP_ERR;
        else if (offset + len > rx.cur_bytes)
            status = IBV_WC_LOC_LEN_ERR;
        else if (!(dst = translate(rx.pd, rx.cur_lkey, rx.cur_addr + offset, len)))
            status = IBV_WC_LOC_PROT_ERR;
        if (status == IBV_WC_SUCCESS)
        {
            memcpy(dst, data, len);
            bump(gl.stats.delivered);
        }
        else
            bump(gl.stats.errors);
        // byte_len of an error CQE is reserved: junk, not a stride count.
        const bool ok = status == IBV_WC_SUCCESS;
        cq_push(rx.cq, completion{rx.consumed, wall_ns(),
                                  ok ? uint32_t(len) | (need << 16) : junk_byte_len(rx.consumed + rx.cur_pos),
                                  rx.qp_num, status});
        if (!ok && status != IBV_WC_LOC_LEN_ERR)
        {
            rx_enter_error(rx);
            return result::delivered;
        }
        rx.cur_pos += need;
        if (rx.cur_pos == rx.strides_per_wqe)
            complete_wqe(rx);
        return result::delivered;
    }
}

void rx_flush(rx_queue &rx, bool flush_cqes);

void rx_enter_error(rx_queue &rx)
{
    global &gl = *g;
    if (rx.owner_qp)
    {
        ibv_qp &q = rx.owner_qp->qp;
        if (q.state == IBV_QPS_ERR)
            return;
        if (q.state == IBV_QPS_RTR || q.state == IBV_QPS_RTS)
            gl.stats.rx_ready--;
        q.state = IBV_QPS_ERR;
        if (!rx.cq->broken)
            rx_flush(rx, true);
    }
    else if (rx.owner_wq)
    {
        ibv_wq &w = rx.owner_wq->wq;
        if (w.state == IBV_WQS_ERR)
            return;
        if (w.state == IBV_WQS_RDY)
            gl.stats.rx_ready--;
        w.state = IBV_WQS_ERR;
        if (!rx.striding && !rx.cq->broken)
            rx_flush(rx, true);
    }
    EMU_LOG("receive queue %u entered the error state", rx.qp_num);
}

uint32_t flow_hash(const headers &h)
{
    uint32_t x = 2166136261u;
    auto mix = [&x](uint32_t v) { x = (x ^ v) * 16777619u; };
    mix(h.src_ip);
    mix(h.dst_ip);
    mix(h.src_port);
    mix(h.dst_port);
    return x;
}

/* Set bits of the rule's masks: how specific it is. */
int mask_bits(const flow_t &f)
{
    int bits = 0;
    auto count = [&bits](const void *p, size_t n) {
        const auto *b = static_cast<const uint8_t *>(p);
        for (size_t i = 0; i < n; i++)
            bits += __builtin_popcount(b[i]);
    };
    if (f.has_eth)
        count(&f.eth_mask, sizeof(f.eth_mask));
    if (f.has_ip)
        count(&f.ip_mask, sizeof(f.ip_mask));
    if (f.has_l4)
        count(&f.l4_mask, sizeof(f.l4_mask));
    return bits;
}

/* Whether two rules match exactly the same frames (same specs, masks and
 * masked values). */
bool same_match(const flow_t &a, const flow_t &b)
{
    if (a.has_eth != b.has_eth || a.has_ip != b.has_ip || a.has_l4 != b.has_l4
        || (a.has_l4 && a.l4_proto != b.l4_proto))
        return false;
    auto same = [](const void *va, const void *ma, const void *vb, const void *mb, size_t n) {
        const auto *xa = static_cast<const uint8_t *>(va), *ya = static_cast<const uint8_t *>(ma);
        const auto *xb = static_cast<const uint8_t *>(vb), *yb = static_cast<const uint8_t *>(mb);
        for (size_t i = 0; i < n; i++)
            if (ya[i] != yb[i] || (xa[i] & ya[i]) != (xb[i] & yb[i]))
                return false;
        return true;
    };
    return (!a.has_eth || same(&a.eth_val, &a.eth_mask, &b.eth_val, &b.eth_mask, sizeof(a.eth_val)))
        && (!a.has_ip || same(&a.ip_val, &a.ip_mask, &b.ip_val, &b.ip_mask, sizeof(a.ip_val)))
        && (!a.has_l4 || same(&a.l4_val, &a.l4_mask, &b.l4_val, &b.l4_mask, sizeof(a.l4_val)));
}

/* Delivers a steered frame to one QP's receive queue. */
result deliver_to(qp_t *qp, const headers &h, const uint8_t *data, size_t len, bool lossless)
{
    global &gl = *g;
    if (qp->rss)
    {
        const auto &wqs = qp->ind->wqs;
        wq_t *wq = wqs.size() == 1 ? wqs[0] : wqs[flow_hash(h) % wqs.size()];
        if (wq->wq.state != IBV_WQS_RDY)
        {
            // Lossless replay waits while the application recovers a queue.
            if (lossless && wq->wq.state != IBV_WQS_UNKNOWN && !wq->rx.cq->broken)
                return result::retry;
            return drop(gl.stats.not_ready);
        }
        return wq->rx.striding ? deliver_striding(wq->rx, data, len, lossless)
                               : deliver_plain(wq->rx, data, len, lossless);
    }
    if (qp->qp.state != IBV_QPS_RTR && qp->qp.state != IBV_QPS_RTS)
    {
        if (lossless && !qp->rx.cq->broken)
            return result::retry;
        return drop(gl.stats.not_ready);
    }
    return deliver_plain(qp->rx, data, len, lossless);
}

/* Steering, modelled on mlx5 (ConnectX-5):
 *  - the highest-precedence priority (lowest value) with a matching rule wins;
 *  - among matching rules at that priority, the least specific (fewest mask
 *    bits) wins: an overlapping wildcard rule takes the frames and the more
 *    specific readers starve;
 *  - every rule identical to the winner (same specs, masks and values, as
 *    two readers of the same group or port create) gets its own copy.
 * A frame copied to several queues waits for none of them in lossless mode
 * (a queue without room drops its copy). */
result process_frame(const uint8_t *data, size_t len, bool lossless)
{
    global &gl = *g;
    headers h;
    if (!parse_frame(data, len, h))
        return drop(gl.stats.no_flow);
    const flow_t *winner = nullptr;
    int winner_bits = 0;
    for (const flow_t *f : gl.flows)   // sorted by (priority, seq)
    {
        if (winner && f->priority != winner->priority)
            break;
        if (!flow_matches(*f, h))
            continue;
        const int bits = mask_bits(*f);
        if (!winner || bits < winner_bits)
        {
            winner = f;
            winner_bits = bits;
        }
    }
    if (!winner)
        return drop(gl.stats.no_flow);
    std::vector<qp_t *> dests;
    for (const flow_t *f : gl.flows)
        if (f->priority == winner->priority && same_match(*f, *winner)
            && std::find(dests.begin(), dests.end(), f->qp) == dests.end())
            dests.push_back(f->qp);
    if (dests.size() == 1)
        return deliver_to(dests[0], h, data, len, lossless);
    bool any = false;
    for (qp_t *qp : dests)
        any |= deliver_to(qp, h, data, len, false) == result::delivered;
    return any ? result::delivered : result::dropped;
}

/* Takes the frames waiting on the UDP wire and processes them (device mutex
 * held).  Returns the number processed. */
size_t drain_udp_locked(size_t max_frames)
{
    global &gl = *g;
    if (gl.udp_fd < 0)
        return 0;
    constexpr int batch = 32;
    constexpr size_t frame_max = 65536;
    if (gl.udp_bufs.empty())
        gl.udp_bufs.resize(batch * frame_max);
    mmsghdr msgs[batch];
    iovec iov[batch];
    size_t total = 0;
    while (total < max_frames)
    {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < batch; i++)
        {
            iov[i].iov_base = gl.udp_bufs.data() + i * frame_max;
            iov[i].iov_len = frame_max;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(gl.udp_fd, msgs, batch, MSG_DONTWAIT, nullptr);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++)
        {
            bump(gl.stats.received);
            process_frame(static_cast<const uint8_t *>(iov[i].iov_base), msgs[i].msg_len, false);
        }
        total += size_t(n);
        if (n < batch)
            break;
    }
    return total;
}

/* Before any change of the receive topology (queue state, flows, queue
 * destruction), process what is already on the wire with the old topology,
 * so that a frame sent before the call sees the state before the call. */
void sync_wire_locked()
{
    global &gl = *g;
    if (gl.cfg.wire == wire_kind::udp)
        drain_udp_locked(1u << 20);
}

/* ------------------------------------------------------------------------ */
/* The NIC thread                                                           */

/* Whether the queue has a receive buffer posted (device mutex held). */
bool rx_has_buffer(rx_queue &rx)
{
    if (rx.striding)
    {
        uint32_t db = be32toh(__atomic_load_n(&rx.dbrec[MLX5_RCV_DBR], __ATOMIC_ACQUIRE)) & 0xffff;
        return rx.have_cur || ((db - uint32_t(rx.consumed)) & 0xffff) != 0;
    }
    std::lock_guard<std::mutex> lock(rx.rmu);
    return rx.rhead != rx.rtail;
}

/* Whether some queue a flow rule steers to is ready and has a buffer posted
 * (device mutex held). */
bool steered_queue_armed_locked()
{
    global &gl = *g;
    for (flow_t *f : gl.flows)
    {
        qp_t *qp = f->qp;
        if (qp->rss)
        {
            for (wq_t *wq : qp->ind->wqs)
                if (wq->wq.state == IBV_WQS_RDY && rx_has_buffer(wq->rx))
                    return true;
        }
        else if ((qp->qp.state == IBV_QPS_RTR || qp->qp.state == IBV_QPS_RTS) && rx_has_buffer(qp->rx))
            return true;
    }
    return false;
}

void pcap_step(uint64_t idle_ns)
{
    global &gl = *g;
    if (!gl.pcap_started)
    {
        // Replay begins once the application can receive: a queue ready
        // (which it must be before it is posted to, as on mlx5) and posted.
        bool armed;
        {
            std::lock_guard<std::mutex> lock(gl.mu);
            armed = steered_queue_armed_locked();
        }
        if (!armed)
        {
            wait_stop(std::min<uint64_t>(idle_ns, 1000000));
            return;
        }
        gl.pcap_started = true;
        gl.pcap_base_n = gl.pcap_sent;
        gl.pcap_base_ns = now_ns();
    }
    if (!gl.pcap_pending)
    {
        if (!gl.pcap.next(gl.pcap_frame))
        {
            wait_stop(idle_ns);
            return;
        }
        gl.pcap_pending = true;
    }
    if (gl.cfg.pcap_rate > 0)
    {
        uint64_t due = gl.pcap_base_ns
            + uint64_t(double(gl.pcap_sent - gl.pcap_base_n) * 1e9 / gl.cfg.pcap_rate);
        uint64_t now = now_ns();
        if (now < due)
        {
            wait_stop(std::min(due - now, idle_ns));
            return;
        }
    }
    result r;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        r = process_frame(gl.pcap_frame.data(), gl.pcap_frame.size(), gl.cfg.pcap_lossless);
        if (r != result::retry)
            bump(gl.stats.received);
    }
    if (r == result::retry)
    {
        wait_stop(20000);
        return;
    }
    gl.pcap_pending = false;
    gl.pcap_sent++;
}

void nic_main()
{
    global &gl = *g;
    pthread_setname_np(pthread_self(), "emu-nic");
    if (gl.cfg.wire == wire_kind::pcap)
    {
        gl.pcap_base_n = gl.pcap_sent;
        gl.pcap_base_ns = now_ns();
    }
    uint64_t last_write = 0;
    while (!gl.stop.load())
    {
        bool dirty = gl.stats.signature() != gl.written_sig.load();
        uint64_t idle_ns = dirty ? 10000000u : 100000000u;
        switch (gl.cfg.wire)
        {
        case wire_kind::udp:
            if (gl.udp_fd >= 0)
            {
                pollfd fds[2] = {{gl.udp_fd, POLLIN, 0}, {gl.stop_fd, POLLIN, 0}};
                poll(fds, 2, int(idle_ns / 1000000u));
                if (fds[0].revents & POLLIN)
                {
                    std::lock_guard<std::mutex> lock(gl.mu);
                    drain_udp_locked(1024);
                }
            }
            else
                wait_stop(idle_ns);
            break;
        case wire_kind::pcap:
            if (!gl.pcap.eof || gl.pcap_pending)
                pcap_step(idle_ns);
            else
                wait_stop(idle_ns);
            break;
        case wire_kind::none:
            wait_stop(idle_ns);
            break;
        }
        uint64_t now = now_ns();
        if (gl.stats.signature() != gl.written_sig.load() && now - last_write >= 10000000u)
        {
            write_stats_file();
            last_write = now;
        }
    }
    write_stats_file();
}

/* ------------------------------------------------------------------------ */
/* Device, context, queries                                                 */

int ctx_query_port(ibv_context *, uint8_t port_num, ibv_port_attr *attr, size_t attr_len);
ibv_cq_ex *ctx_create_cq_ex(ibv_context *context, ibv_cq_init_attr_ex *attr);
ibv_qp *ctx_create_qp_ex(ibv_context *context, ibv_qp_init_attr_ex *attr);
ibv_flow *ctx_create_flow(ibv_qp *qp, ibv_flow_attr *attr);
int ctx_destroy_flow(ibv_flow *flow);
ibv_wq *ctx_create_wq(ibv_context *context, ibv_wq_init_attr *attr);
int ctx_modify_wq(ibv_wq *wq, ibv_wq_attr *attr);
int ctx_destroy_wq(ibv_wq *wq);
ibv_rwq_ind_table *ctx_create_ind_table(ibv_context *context, ibv_rwq_ind_table_init_attr *attr);
int ctx_destroy_ind_table(ibv_rwq_ind_table *t);
int ctx_query_device_ex(ibv_context *, const ibv_query_device_ex_input *, ibv_device_attr_ex *, size_t);
int op_post_recv(ibv_qp *qp, ibv_recv_wr *wr, ibv_recv_wr **bad_wr);

/* ------------------------------------------------------------------------ */
/* Send queues                                                              */

uint16_t ones_sum(const uint8_t *p, size_t n, uint32_t sum = 0)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += uint32_t(p[i] << 8 | p[i + 1]);
    if (n & 1)
        sum += uint32_t(p[n - 1] << 8);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return uint16_t(sum);
}

/* What a receiver (or a switch) checks of a sent frame: Ethernet II (one
 * optional 802.1Q tag), IPv4 without fragmentation, a valid header
 * checksum, total length = the frame, UDP length = the IP payload, UDP
 * checksum 0 or valid, and for a multicast destination the matching
 * 01:00:5e MAC.  Sets the UDP payload on success. */
bool check_sent_frame(const uint8_t *p, size_t len, const uint8_t *&payload, size_t &payload_len,
                      uint16_t &dst_port)
{
    size_t off = 14;
    if (len < off)
        return false;
    uint16_t et = uint16_t(p[12] << 8 | p[13]);
    if (et == 0x8100)
    {
        if (len < 18)
            return false;
        et = uint16_t(p[16] << 8 | p[17]);
        off = 18;
    }
    if (et != 0x0800 || len < off + 20)
        return false;
    const uint8_t *ip = p + off;
    const size_t ihl = size_t(ip[0] & 0xf) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || len < off + ihl + 8)
        return false;
    if (ones_sum(ip, ihl) != 0xffff)
        return false;                                   // header checksum
    const size_t total = size_t(ip[2] << 8 | ip[3]);
    if (total != len - off)
        return false;
    if ((ip[6] & 0x3f) != 0 || ip[7] != 0 || ip[9] != IPPROTO_UDP)
        return false;                                   // fragment, or not UDP
    const uint8_t *udp = ip + ihl;
    const size_t udp_len = size_t(udp[4] << 8 | udp[5]);
    if (udp_len != total - ihl)
        return false;
    if (udp[6] || udp[7])
    {
        // Pseudo header: addresses, protocol, UDP length.
        uint8_t pseudo[12];
        memcpy(pseudo, ip + 12, 8);
        pseudo[8] = 0;
        pseudo[9] = IPPROTO_UDP;
        pseudo[10] = udp[4];
        pseudo[11] = udp[5];
        uint32_t sum = ones_sum(pseudo, 12);
        if (ones_sum(udp, udp_len, sum) != 0xffff)
            return false;
    }
    if (ip[16] >= 224 && ip[16] <= 239)
    {
        const uint8_t want[6] = {0x01, 0x00, 0x5e, uint8_t(ip[17] & 0x7f), ip[18], ip[19]};
        if (memcmp(p, want, 6) != 0)
            return false;
    }
    payload = udp + 8;
    payload_len = udp_len - 8;
    dst_port = uint16_t(udp[2] << 8 | udp[3]);
    return true;
}

/* Puts a checked frame on the send wire (device mutex held). */
void send_wire_put(const uint8_t *frame, size_t len, const uint8_t *payload, size_t payload_len,
                   uint16_t dst_port)
{
    global &gl = *g;
    if (gl.send_fd >= 0)
    {
        sockaddr_in to = gl.cfg.send_udp_addr;
        if (to.sin_port == 0)
            to.sin_port = htons(dst_port);
        if (sendto(gl.send_fd, payload, payload_len, 0, reinterpret_cast<const sockaddr *>(&to), sizeof(to)) < 0)
            bump(gl.stats.tx_wire_errors);
    }
    else if (gl.send_pcap)
    {
        const uint64_t t = wall_ns();
        uint32_t rec[4] = {uint32_t(t / 1000000000u), uint32_t(t % 1000000000u), uint32_t(len), uint32_t(len)};
        if (fwrite(rec, sizeof(rec), 1, gl.send_pcap) != 1 || fwrite(frame, len, 1, gl.send_pcap) != 1)
            bump(gl.stats.tx_wire_errors);
    }
}

/* A send completion (device mutex held).  Error completions are always
 * generated; a full CQ is a fatal CQ error, as on receive. */
void sq_complete(qp_t *qp, uint64_t wr_id, ibv_wc_status status, uint32_t byte_len)
{
    global &gl = *g;
    cq_t *cq = qp->send_cq;
    completion c{wr_id, wall_ns(), byte_len, qp->qp.qp_num, status};
    c.opcode = IBV_WC_SEND;
    c.sq_freed = qp->sq_freed;
    {
        std::lock_guard<std::mutex> lock(qp->sq_freed->mu);
        c.sq_gen = qp->sq_freed->gen;
    }
    c.sq_count = uint32_t(qp->sq_posted - qp->sq_reported);
    if (cq->broken)
        return;
    if (!cq_has_space(cq, 1))
    {
        bump(gl.stats.cq_overflow);
        cq_fail(cq);
        if (qp->has_recv_queue)
            rx_enter_error(qp->rx);
        qp->qp.state = IBV_QPS_ERR;
        return;
    }
    qp->sq_reported = qp->sq_posted;
    cq_push(cq, c);
}

/* The send queue executes each WR as it is posted (on the caller's thread):
 * gather, check, put on the send wire, complete. */
int op_post_send(ibv_qp *ibqp, ibv_send_wr *wr, ibv_send_wr **bad_wr)
{
    global &gl = G();
    qp_t *qp = to_qp(ibqp);
    int ret = 0;
    std::vector<uint8_t> frame;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        for (ibv_send_wr *w = wr; w; w = w->next)
        {
            const ibv_qp_state state = qp->qp.state;
            int err = 0;
            if (qp->rss || !qp->has_send_queue || (state != IBV_QPS_RTS && state != IBV_QPS_ERR))
                err = EINVAL;    // posting needs RTS (or ERR, where WRs are flushed)
            else if (w->num_sge < 0 || uint32_t(w->num_sge) > qp->sq_max_sge || w->opcode != IBV_WR_SEND
                     || (w->send_flags & IBV_SEND_INLINE))
                err = EINVAL;
            else if (qp->sq_posted - qp->sq_freed->get() >= qp->sq_cap)
                err = ENOMEM;    // send queue full: completions not polled yet
            if (err)
            {
                EMU_LOG("post_send: rejected (%s)", strerror(err));
                if (bad_wr)
                    *bad_wr = w;
                ret = err;
                break;
            }
            qp->sq_posted++;
            const bool signaled = (w->send_flags & IBV_SEND_SIGNALED) || qp->sig_all;
            if (state == IBV_QPS_ERR)
            {
                bump(gl.stats.tx_flushed);
                sq_complete(qp, w->wr_id, IBV_WC_WR_FLUSH_ERR, 0);
                continue;
            }
            // Gather.
            frame.clear();
            bool prot = ++gl.send_wrs == gl.cfg.send_error_at;   // fault injection
            for (int i = 0; i < w->num_sge && !prot; i++)
            {
                const ibv_sge &sg = w->sg_list[i];
                mr_t *mr = translate_read(qp->pd, sg.lkey, sg.addr, sg.length);
                if (!mr)
                {
                    prot = true;
                    break;
                }
                const uint8_t *src = static_cast<const uint8_t *>(mr->mr.addr) + (sg.addr - mr->iova);
                frame.insert(frame.end(), src, src + sg.length);
                bump(gl.stats.tx_sges);
                std::lock_guard<std::mutex> tl(gl.stats.tx_mu);
                auto &entry = gl.stats.mr_tx[uint64_t(reinterpret_cast<uintptr_t>(mr->mr.addr))];
                entry.first = mr->mr.length;
                entry.second += sg.length;
            }
            if (prot || frame.size() > max_send_frame)
            {
                // As mlx5: an error completion, and the QP enters the error state.
                bump(gl.stats.tx_errors);
                EMU_LOG("post_send: WR %" PRIu64 " failed (%s)", w->wr_id,
                        prot ? "sge outside any MR of the PD" : "frame too long");
                sq_complete(qp, w->wr_id, prot ? IBV_WC_LOC_PROT_ERR : IBV_WC_LOC_LEN_ERR, 0);
                if (qp->has_recv_queue)
                    rx_enter_error(qp->rx);
                qp->qp.state = IBV_QPS_ERR;
                continue;
            }
            const uint8_t *payload;
            size_t payload_len;
            uint16_t dst_port;
            if (check_sent_frame(frame.data(), frame.size(), payload, payload_len, dst_port))
            {
                bump(gl.stats.tx_frames);
                gl.stats.tx_bytes.fetch_add(frame.size(), std::memory_order_relaxed);
                send_wire_put(frame.data(), frame.size(), payload, payload_len, dst_port);
            }
            else
            {
                bump(gl.stats.tx_bad_frames);
                EMU_LOG("post_send: WR %" PRIu64 " is not a valid Ethernet/IPv4/UDP frame (not sent)", w->wr_id);
            }
            if (signaled)
            {
                bump(gl.stats.tx_signaled);
                sq_complete(qp, w->wr_id, IBV_WC_SUCCESS, uint32_t(frame.size()));
            }
        }
        if (gl.send_pcap)
            fflush(gl.send_pcap);
    }
    stats_changed_offthread();
    return ret;
}

int op_post_srq_recv(ibv_srq *, ibv_recv_wr *wr, ibv_recv_wr **bad_wr)
{
    if (bad_wr)
        *bad_wr = wr;
    return ENOSYS;
}

context_t *open_context()
{
    global &gl = *g;
    context_t *c = new context_t();
    memset(&c->vctx, 0, sizeof(c->vctx));
    verbs_context &v = c->vctx;
    ibv_context &ctx = v.context;
    ctx.device = &gl.device;
    ctx.cmd_fd = -1;
    ctx.async_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
    ctx.num_comp_vectors = num_comp_vectors;
    pthread_mutex_init(&ctx.mutex, nullptr);
    ctx.abi_compat = __VERBS_ABI_IS_EXTENDED;
    ctx.ops.poll_cq = cq_poll;
    ctx.ops.req_notify_cq = cq_req_notify;
    ctx.ops.post_recv = op_post_recv;
    ctx.ops.post_send = op_post_send;
    ctx.ops.post_srq_recv = op_post_srq_recv;
    v.sz = sizeof(verbs_context);
    v.query_port = ctx_query_port;
    v.create_cq_ex = ctx_create_cq_ex;
    v.create_qp_ex = ctx_create_qp_ex;
    if (gl.cfg.old_flow_abi)
    {
        // Old libibverbs kept the flow verbs in the slots that the current
        // headers call ABI_placeholder1/2; the current slots stay empty, so
        // the inline ibv_create_flow fails with EOPNOTSUPP.
        v.ABI_placeholder1 = reinterpret_cast<void (*)(void)>(ctx_create_flow);
        v.ABI_placeholder2 = reinterpret_cast<void (*)(void)>(ctx_destroy_flow);
    }
    else
    {
        v.ibv_create_flow = ctx_create_flow;
        v.ibv_destroy_flow = ctx_destroy_flow;
    }
    v.create_wq = ctx_create_wq;
    v.modify_wq = ctx_modify_wq;
    v.destroy_wq = ctx_destroy_wq;
    v.create_rwq_ind_table = ctx_create_ind_table;
    v.destroy_rwq_ind_table = ctx_destroy_ind_table;
    v.query_device_ex = ctx_query_device_ex;
    return c;
}

void fill_device_attr(ibv_device_attr &a)
{
    const config &cfg = g->cfg;
    memset(&a, 0, sizeof(a));
    snprintf(a.fw_ver, sizeof(a.fw_ver), "0.0.0 (spead2 emulator)");
    uint64_t guid = 0;
    for (int i = 0; i < 3; i++)
        guid = (guid << 8) | cfg.mac[i];
    guid = (guid << 16) | 0xfffe;
    for (int i = 3; i < 6; i++)
        guid = (guid << 8) | cfg.mac[i];
    guid ^= UINT64_C(0x0200000000000000);
    a.node_guid = htobe64(guid);
    a.sys_image_guid = htobe64(guid);
    a.max_mr_size = cfg.max_mr_size;
    a.page_size_cap = 0xfffff000u;
    a.vendor_id = 0x02c9;
    a.vendor_part_id = 4119;
    a.hw_ver = 0;
    a.max_qp = max_objects;
    a.max_qp_wr = cfg.max_qp_wr;
    a.device_cap_flags = IBV_DEVICE_RAW_IP_CSUM | IBV_DEVICE_PORT_ACTIVE_EVENT;
    if (!cfg.no_flow)
        a.device_cap_flags |= IBV_DEVICE_MANAGED_FLOW_STEERING;
    a.max_sge = max_sge;
    a.max_sge_rd = 0;
    a.max_cq = max_objects;
    a.max_cqe = cfg.max_cqe;
    a.max_mr = max_objects;
    a.max_pd = max_objects;
    a.max_raw_ethy_qp = max_objects;
    a.max_mcast_grp = 0;
    a.max_pkeys = 1;
    a.phys_port_cnt = 1;
}

void fill_port_attr(ibv_port_attr &p)
{
    p.state = IBV_PORT_ACTIVE;
    p.max_mtu = IBV_MTU_4096;
    p.active_mtu = IBV_MTU_4096;
    p.gid_tbl_len = 1;
    p.port_cap_flags = 0;
    p.max_msg_sz = 0x40000000;
    p.pkey_tbl_len = 1;
    p.active_width = 2;     // 4x
    p.active_speed = 32;    // EDR-class
    p.phys_state = 5;       // LinkUp
    p.link_layer = IBV_LINK_LAYER_ETHERNET;
}

int ctx_query_port(ibv_context *, uint8_t port_num, ibv_port_attr *attr, size_t attr_len)
{
    if (port_num != 1)
        return EINVAL;
    ibv_port_attr p;
    memset(&p, 0, sizeof(p));
    fill_port_attr(p);
    memset(attr, 0, attr_len);
    memcpy(attr, &p, std::min(attr_len, sizeof(p)));
    return 0;
}

int ctx_query_device_ex(ibv_context *context, const ibv_query_device_ex_input *input,
                        ibv_device_attr_ex *attr, size_t attr_size)
{
    if (input && input->comp_mask)
        return EINVAL;
    if (!is_our_context(context))
        return EINVAL;
    ibv_device_attr_ex a;
    memset(&a, 0, sizeof(a));
    fill_device_attr(a.orig_attr);
    a.completion_timestamp_mask = ~UINT64_C(0);
    a.hca_core_clock = 1000000;     // kHz: completion timestamps are in ns
    a.rss_caps.supported_qpts = 1u << IBV_QPT_RAW_PACKET;
    a.rss_caps.max_rwq_indirection_tables = max_objects;
    a.rss_caps.max_rwq_indirection_table_size = 256;
    a.rss_caps.rx_hash_fields_mask = IBV_RX_HASH_SRC_IPV4 | IBV_RX_HASH_DST_IPV4
        | IBV_RX_HASH_SRC_PORT_UDP | IBV_RX_HASH_DST_PORT_UDP
        | IBV_RX_HASH_SRC_PORT_TCP | IBV_RX_HASH_DST_PORT_TCP;
    a.rss_caps.rx_hash_function = IBV_RX_HASH_FUNC_TOEPLITZ;
    a.max_wq_type_rq = max_objects;
    a.raw_packet_caps = IBV_RAW_PACKET_CAP_IP_CSUM;
    a.phys_port_cnt_ex = 1;
    size_t n = std::min(attr_size, sizeof(a));
    memcpy(attr, &a, n);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Receive queues                                                           */

bool rx_init_plain(rx_queue &rx, uint32_t max_wr, uint32_t max_sge_req)
{
    rx.rcap = max_wr;
    rx.rmax_sge = max_sge_req ? max_sge_req : 1;
    try
    {
        rx.r_wr_id.assign(rx.rcap, 0);
        rx.r_nsge.assign(rx.rcap, 0);
        rx.r_sge.assign(size_t(rx.rcap) * rx.rmax_sge, ibv_sge{});
    }
    catch (std::bad_alloc &)
    {
        return false;
    }
    return true;
}

int rx_post(rx_queue &rx, ibv_recv_wr *wr, ibv_recv_wr **bad_wr)
{
    std::lock_guard<std::mutex> lock(rx.rmu);
    for (; wr; wr = wr->next)
    {
        int err = 0;
        if (wr->num_sge < 0 || uint32_t(wr->num_sge) > rx.rmax_sge)
            err = EINVAL;
        else if (rx.rhead - rx.rtail >= rx.rcap)
            err = ENOMEM;
        if (err)
        {
            if (bad_wr)
                *bad_wr = wr;
            return err;
        }
        uint32_t slot = uint32_t(rx.rhead % rx.rcap);
        rx.r_wr_id[slot] = wr->wr_id;
        rx.r_nsge[slot] = uint32_t(wr->num_sge);
        if (wr->num_sge)
            memcpy(&rx.r_sge[size_t(slot) * rx.rmax_sge], wr->sg_list,
                   size_t(wr->num_sge) * sizeof(ibv_sge));
        rx.rhead++;
    }
    return 0;
}

/* Flushes outstanding receive WRs (device mutex held).  With flush_cqes,
 * each produces an IBV_WC_WR_FLUSH_ERR completion (QP/WQ to ERR);
 * otherwise they are discarded (to RESET). */
void rx_flush(rx_queue &rx, bool flush_cqes)
{
    std::lock_guard<std::mutex> lock(rx.rmu);
    while (rx.rtail != rx.rhead)
    {
        uint32_t slot = uint32_t(rx.rtail % rx.rcap);
        if (flush_cqes)
        {
            if (!cq_has_space(rx.cq, 1))
                break;
            cq_push(rx.cq, completion{rx.r_wr_id[slot], wall_ns(), 0, rx.qp_num,
                                      IBV_WC_WR_FLUSH_ERR});
        }
        rx.rtail++;
    }
    if (!flush_cqes)
        rx.rtail = rx.rhead;
}

int op_post_recv(ibv_qp *ibqp, ibv_recv_wr *wr, ibv_recv_wr **bad_wr)
{
    qp_t *qp = to_qp(ibqp);
    if (qp->rss || qp->qp.state == IBV_QPS_ERR)
    {
        if (bad_wr)
            *bad_wr = wr;
        return EINVAL;
    }
    return rx_post(qp->rx, wr, bad_wr);
}

int wq_post_recv(ibv_wq *ibwq, ibv_recv_wr *wr, ibv_recv_wr **bad_wr)
{
    wq_t *wq = to_wq(ibwq);
    if (wq->rx.striding || wq->wq.state == IBV_WQS_ERR)
    {
        if (bad_wr)
            *bad_wr = wr;
        return wq->rx.striding ? EOPNOTSUPP : EINVAL;
    }
    return rx_post(wq->rx, wr, bad_wr);
}

/* ------------------------------------------------------------------------ */
/* Queue pairs                                                              */

qp_t *create_qp_common(ibv_context *context, ibv_pd *ibpd, const ibv_qp_init_attr_ex &a,
                       bool rss, ibv_qp_cap *cap_out)
{
    global &gl = G();
    if (!is_our_context(context) || !ibpd || ibpd->context != context)
        return fail<qp_t>(EINVAL);
    if (a.qp_type != IBV_QPT_RAW_PACKET)
    {
        EMU_LOG("create_qp: only IBV_QPT_RAW_PACKET is emulated (got %d)", int(a.qp_type));
        return fail<qp_t>(EOPNOTSUPP);
    }
    if (gl.cfg.no_raw)
        return fail<qp_t>(EPERM);
    if (a.srq)
        return fail<qp_t>(EOPNOTSUPP);
    std::unique_ptr<qp_t> qp(new qp_t());
    memset(&qp->qp, 0, sizeof(qp->qp));
    qp->ctx = to_ctx(context);
    qp->pd = to_pd(ibpd);
    qp->rss = rss;
    ind_table_t *ind = nullptr;
    cq_t *rcq = nullptr, *scq = nullptr;
    if (rss)
    {
        if (!a.rwq_ind_tbl || a.rwq_ind_tbl->context != context)
            return fail<qp_t>(EINVAL);
        if (a.rx_hash_conf.rx_hash_function != IBV_RX_HASH_FUNC_TOEPLITZ
            || (a.rx_hash_conf.rx_hash_key_len && !a.rx_hash_conf.rx_hash_key))
            return fail<qp_t>(EINVAL);
        if (a.send_cq || a.recv_cq || a.cap.max_recv_wr || a.cap.max_send_wr)
            EMU_LOG("create_qp_ex (RSS): send/recv CQs and caps are ignored");
        ind = to_ind(a.rwq_ind_tbl);
        qp->ind = ind;
        qp->hash_fields = a.rx_hash_conf.rx_hash_fields_mask;
    }
    else
    {
        if (!a.recv_cq || a.recv_cq->context != context
            || (a.send_cq && a.send_cq->context != context))
            return fail<qp_t>(EINVAL);
        // A QP needs a receive or a send queue (or both).
        if ((a.cap.max_recv_wr < 1 && a.cap.max_send_wr < 1) || a.cap.max_recv_wr > uint32_t(gl.cfg.max_qp_wr)
            || a.cap.max_send_wr > uint32_t(gl.cfg.max_qp_wr)
            || (a.cap.max_send_wr > 0 && !a.send_cq)
            || a.cap.max_inline_data > 0
            || a.cap.max_recv_sge > uint32_t(max_sge) || a.cap.max_send_sge > uint32_t(max_sge))
            return fail<qp_t>(EINVAL);
        rcq = to_cq(a.recv_cq);
        scq = a.send_cq ? to_cq(a.send_cq) : nullptr;
        qp->has_recv_queue = a.cap.max_recv_wr > 0;
        if (!rx_init_plain(qp->rx, std::max<uint32_t>(a.cap.max_recv_wr, 1), a.cap.max_recv_sge))
            return fail<qp_t>(ENOMEM);
        qp->rx.cq = rcq;
        qp->rx.owner_qp = qp.get();
        qp->rx.pd = qp->pd;
        qp->send_cq = scq;
        qp->has_send_queue = a.cap.max_send_wr > 0;
        qp->sq_cap = a.cap.max_send_wr;
        qp->sig_all = a.sq_sig_all != 0;
        qp->sq_max_sge = std::max<uint32_t>(a.cap.max_send_sge, 1);   // as libmlx5: at least one
    }
    ibv_qp &q = qp->qp;
    q.context = context;
    q.qp_context = a.qp_context;
    q.pd = ibpd;
    q.send_cq = a.send_cq;
    q.recv_cq = a.recv_cq;
    q.state = IBV_QPS_RESET;
    q.qp_type = IBV_QPT_RAW_PACKET;
    pthread_mutex_init(&q.mutex, nullptr);
    pthread_cond_init(&q.cond, nullptr);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.objects >= max_objects)
            return fail<qp_t>(ENOMEM);
        if (!rss)
        {
            qp->rx.pinned = qp->has_recv_queue ? uint64_t(qp->rx.rcap) * qp->rx.rmax_sge * sizeof(ibv_sge) : 0;
            if (!charge_pinned(qp->rx.pinned))
                return fail<qp_t>(ENOMEM);
            qp->sq_pinned = uint64_t(qp->sq_cap) * send_wqe_bytes;
            if (!charge_pinned(qp->sq_pinned))
            {
                uncharge_pinned(qp->rx.pinned);
                return fail<qp_t>(ENOMEM);
            }
        }
        gl.objects++;
        q.qp_num = q.handle = gl.next_num++;
        qp->rx.qp_num = q.qp_num;
        qp->pd->users++;
        if (rss)
            ind->users++;
        else
        {
            rcq->users++;
            if (scq)
                scq->users++;
            gl.stats.send_queues += qp->has_send_queue;
            gl.rx_queues += qp->has_recv_queue;
        }
    }
    if (cap_out && !rss)
    {
        cap_out->max_recv_sge = qp->has_recv_queue ? qp->rx.rmax_sge : 0;
        cap_out->max_send_sge = qp->sq_max_sge;
        cap_out->max_inline_data = 0;
    }
    ctx_ref(qp->ctx);
    return qp.release();
}

int destroy_qp_impl(ibv_qp *ibqp)
{
    global &gl = G();
    qp_t *qp = to_qp(ibqp);
    bool was_rx;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (qp->users > 0)
        {
            emu_warn("ibv_destroy_qp: QP %u still has %d flow(s): EBUSY", qp->qp.qp_num, qp->users);
            return EBUSY;
        }
        sync_wire_locked();
        qp->pd->users--;
        was_rx = !qp->rss && qp->has_recv_queue;
        if (qp->rss)
            qp->ind->users--;
        else
        {
            if (qp->has_recv_queue && (qp->qp.state == IBV_QPS_RTR || qp->qp.state == IBV_QPS_RTS))
                gl.stats.rx_ready--;
            qp->rx.cq->users--;
            if (qp->send_cq)
                qp->send_cq->users--;
            uncharge_pinned(qp->rx.pinned);
            uncharge_pinned(qp->sq_pinned);
            gl.stats.send_queues -= qp->has_send_queue;
            gl.rx_queues -= qp->has_recv_queue;
        }
        gl.objects--;
    }
    pthread_mutex_destroy(&qp->qp.mutex);
    pthread_cond_destroy(&qp->qp.cond);
    context_t *ctx = qp->ctx;
    delete qp;
    ctx_unref(ctx);
    if (was_rx)
        maybe_stop_nic();
    topology_changed();
    return 0;
}

bool qp_transition_ok(ibv_qp_state from, ibv_qp_state to)
{
    if (to == IBV_QPS_RESET || to == IBV_QPS_ERR)
        return true;
    switch (from)
    {
    case IBV_QPS_RESET: return to == IBV_QPS_INIT;
    case IBV_QPS_INIT: return to == IBV_QPS_INIT || to == IBV_QPS_RTR;
    case IBV_QPS_RTR: return to == IBV_QPS_RTS;
    case IBV_QPS_RTS: return to == IBV_QPS_RTS;
    default: return false;
    }
}

int modify_qp_impl(ibv_qp *ibqp, ibv_qp_attr *attr, int mask)
{
    global &gl = G();
    qp_t *qp = to_qp(ibqp);
    if (!(mask & IBV_QP_STATE))
        return 0;      // nothing else is meaningful for a raw packet QP
    bool now_ready;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        ibv_qp_state from = qp->qp.state;
        ibv_qp_state to = attr->qp_state;
        if ((mask & IBV_QP_CUR_STATE) && attr->cur_qp_state != from)
            return EINVAL;
        if (!qp_transition_ok(from, to))
        {
            EMU_LOG("modify_qp: illegal transition %d -> %d", int(from), int(to));
            return EINVAL;
        }
        if (from == IBV_QPS_RESET && to == IBV_QPS_INIT)
        {
            if (!(mask & IBV_QP_PORT))
            {
                EMU_LOG("modify_qp: RESET->INIT of a raw packet QP needs IBV_QP_PORT");
                return EINVAL;
            }
        }
        if ((mask & IBV_QP_PORT) && attr->port_num != 1)
            return EINVAL;
        sync_wire_locked();
        if (!qp->rss)
        {
            if (to == IBV_QPS_RESET)
            {
                rx_flush(qp->rx, false);
                // RESET discards the send queue too: every entry is free again.
                {
                    std::lock_guard<std::mutex> sl(qp->sq_freed->mu);
                    qp->sq_freed->freed = qp->sq_posted;
                    qp->sq_freed->gen++;
                }
                qp->sq_reported = qp->sq_posted;
            }
            else if (to == IBV_QPS_ERR)
                rx_flush(qp->rx, true);
        }
        const bool rx = !qp->rss && qp->has_recv_queue;
        bool was_ready = rx && (from == IBV_QPS_RTR || from == IBV_QPS_RTS);
        qp->qp.state = to;
        now_ready = rx && (to == IBV_QPS_RTR || to == IBV_QPS_RTS);
        if (was_ready != now_ready)
            gl.stats.rx_ready += now_ready ? 1 : -1;
    }
    if (now_ready)
        ensure_nic_running();
    topology_changed();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Work queues and indirection tables                                       */

wq_t *create_wq_impl(ibv_context *context, ibv_wq_init_attr *attr,
                     const mlx5dv_wq_init_attr *dv)
{
    global &gl = G();
    if (!is_our_context(context) || !attr)
        return fail<wq_t>(EINVAL);
    if (attr->wq_type != IBV_WQT_RQ || !attr->pd || !attr->cq
        || attr->pd->context != context || attr->cq->context != context)
        return fail<wq_t>(EINVAL);
    if (attr->comp_mask & ~uint32_t(IBV_WQ_INIT_ATTR_FLAGS))
        return fail<wq_t>(EINVAL);
    if (attr->max_wr < 1 || attr->max_wr > uint32_t(gl.cfg.max_qp_wr)
        || attr->max_sge > uint32_t(max_sge))
        return fail<wq_t>(EINVAL);
    bool striding = dv && (dv->comp_mask & MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ);
    if (dv && (dv->comp_mask & ~uint64_t(MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ)))
        return fail<wq_t>(EINVAL);
    std::unique_ptr<wq_t> wq(new wq_t());
    memset(&wq->wq, 0, sizeof(wq->wq));
    wq->ctx = to_ctx(context);
    rx_queue &rx = wq->rx;
    rx.cq = to_cq(attr->cq);
    rx.owner_wq = wq.get();
    rx.pd = to_pd(attr->pd);
    if (striding)
    {
        const mlx5dv_striding_rq_init_attr &s = dv->striding_rq_attrs;
        if (s.single_stride_log_num_of_bytes < min_stride_log
            || s.single_stride_log_num_of_bytes > max_stride_log
            || s.single_wqe_log_num_of_strides < min_strides_log
            || s.single_wqe_log_num_of_strides > max_strides_log)
            return fail<wq_t>(EINVAL);
        if (s.two_byte_shift_en)
            return fail<wq_t>(EOPNOTSUPP);
        rx.striding = true;
        rx.stride_log = s.single_stride_log_num_of_bytes;
        rx.stride_size = 1u << rx.stride_log;
        rx.strides_per_wqe = 1u << s.single_wqe_log_num_of_strides;
        uint32_t cnt = 1;
        while (cnt < attr->max_wr)
            cnt <<= 1;
        rx.wqe_cnt = cnt;
        rx.buf = static_cast<mlx5_mprq_wqe *>(aligned_alloc(64, size_t(cnt) * sizeof(mlx5_mprq_wqe)));
        rx.dbrec = static_cast<uint32_t *>(aligned_alloc(64, 64));
        if (!rx.buf || !rx.dbrec)
        {
            free(rx.buf);
            free(rx.dbrec);
            return fail<wq_t>(ENOMEM);
        }
        memset(rx.buf, 0, size_t(cnt) * sizeof(mlx5_mprq_wqe));
        memset(rx.dbrec, 0, 64);
        attr->max_wr = cnt;
        attr->max_sge = 1;
    }
    else
    {
        if (!rx_init_plain(rx, attr->max_wr, attr->max_sge))
            return fail<wq_t>(ENOMEM);
        attr->max_sge = rx.rmax_sge;
    }
    ibv_wq &w = wq->wq;
    w.context = context;
    w.wq_context = attr->wq_context;
    w.pd = attr->pd;
    w.cq = attr->cq;
    w.state = IBV_WQS_RESET;
    w.wq_type = IBV_WQT_RQ;
    w.post_recv = wq_post_recv;
    pthread_mutex_init(&w.mutex, nullptr);
    pthread_cond_init(&w.cond, nullptr);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        rx.pinned = rx.striding ? uint64_t(rx.wqe_cnt) * sizeof(mlx5_mprq_wqe) + 64
                                : uint64_t(rx.rcap) * rx.rmax_sge * sizeof(ibv_sge);
        if (gl.objects >= max_objects || !charge_pinned(rx.pinned))
        {
            free(rx.buf);
            free(rx.dbrec);
            return fail<wq_t>(ENOMEM);
        }
        gl.objects++;
        w.wq_num = w.handle = gl.next_num++;
        rx.qp_num = w.wq_num;
        rx.cq->users++;
        rx.pd->users++;
        gl.rx_queues++;
    }
    ctx_ref(wq->ctx);
    return wq.release();
}

ibv_wq *ctx_create_wq(ibv_context *context, ibv_wq_init_attr *attr)
{
    wq_t *wq = create_wq_impl(context, attr, nullptr);
    return wq ? &wq->wq : nullptr;
}

int ctx_modify_wq(ibv_wq *ibwq, ibv_wq_attr *attr)
{
    global &gl = G();
    wq_t *wq = to_wq(ibwq);
    if (attr->attr_mask & ~uint32_t(IBV_WQ_ATTR_STATE | IBV_WQ_ATTR_CURR_STATE | IBV_WQ_ATTR_FLAGS))
        return EINVAL;
    if (!(attr->attr_mask & IBV_WQ_ATTR_STATE))
        return 0;
    bool now_ready;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        ibv_wq_state from = wq->wq.state;
        ibv_wq_state to = attr->wq_state;
        if ((attr->attr_mask & IBV_WQ_ATTR_CURR_STATE) && attr->curr_wq_state != from)
            return EINVAL;
        bool ok = to == IBV_WQS_ERR || to == IBV_WQS_RESET
            || (to == IBV_WQS_RDY && (from == IBV_WQS_RESET || from == IBV_WQS_RDY));
        if (!ok)
            return EINVAL;
        sync_wire_locked();
        rx_queue &rx = wq->rx;
        if (to == IBV_WQS_RESET)
        {
            if (rx.striding)
            {
                rx.consumed = 0;
                rx.have_cur = false;
                rx.cur_pos = 0;
            }
            else
                rx_flush(rx, false);
        }
        else if (to == IBV_WQS_ERR && !rx.striding)
            rx_flush(rx, true);
        if (to == IBV_WQS_RDY && from == IBV_WQS_RESET && rx.striding)
        {
            // As libmlx5 does on RESET -> RDY: the doorbell record starts
            // again at 0, so WQEs posted before the queue was ready are lost.
            __atomic_store_n(&rx.dbrec[MLX5_RCV_DBR], 0u, __ATOMIC_RELEASE);
            rx.consumed = 0;
            rx.have_cur = false;
            rx.cur_pos = 0;
            rx.warned_overpost = false;
        }

        bool was_ready = from == IBV_WQS_RDY;
        wq->wq.state = to;
        now_ready = to == IBV_WQS_RDY;
        if (was_ready != now_ready)
            gl.stats.rx_ready += now_ready ? 1 : -1;
    }
    if (now_ready)
        ensure_nic_running();
    topology_changed();
    return 0;
}

int ctx_destroy_wq(ibv_wq *ibwq)
{
    global &gl = G();
    wq_t *wq = to_wq(ibwq);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (wq->users > 0)
        {
            emu_warn("ibv_destroy_wq: WQ %u still in %d indirection table(s): EBUSY",
                     wq->wq.wq_num, wq->users);
            return EBUSY;
        }
        sync_wire_locked();
        if (wq->wq.state == IBV_WQS_RDY)
            gl.stats.rx_ready--;
        wq->rx.cq->users--;
        wq->rx.pd->users--;
        uncharge_pinned(wq->rx.pinned);
        gl.rx_queues--;
        gl.objects--;
    }
    free(wq->rx.buf);
    free(wq->rx.dbrec);
    pthread_mutex_destroy(&wq->wq.mutex);
    pthread_cond_destroy(&wq->wq.cond);
    context_t *ctx = wq->ctx;
    delete wq;
    ctx_unref(ctx);
    maybe_stop_nic();
    topology_changed();
    return 0;
}

ibv_rwq_ind_table *ctx_create_ind_table(ibv_context *context, ibv_rwq_ind_table_init_attr *attr)
{
    global &gl = G();
    if (!is_our_context(context) || !attr || !attr->ind_tbl || attr->comp_mask)
        return fail<ibv_rwq_ind_table>(EINVAL);
    if (attr->log_ind_tbl_size > 8)
        return fail<ibv_rwq_ind_table>(EINVAL);
    size_t n = size_t(1) << attr->log_ind_tbl_size;
    std::unique_ptr<ind_table_t> t(new ind_table_t());
    memset(&t->t, 0, sizeof(t->t));
    for (size_t i = 0; i < n; i++)
    {
        if (!attr->ind_tbl[i] || attr->ind_tbl[i]->context != context)
            return fail<ibv_rwq_ind_table>(EINVAL);
        t->wqs.push_back(to_wq(attr->ind_tbl[i]));
    }
    t->ctx = to_ctx(context);
    t->t.context = context;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.objects >= max_objects)
            return fail<ibv_rwq_ind_table>(ENOMEM);
        gl.objects++;
        t->t.ind_tbl_handle = t->t.ind_tbl_num = int(gl.next_num++);
        for (wq_t *wq : t->wqs)
            wq->users++;
    }
    ctx_ref(t->ctx);
    return &t.release()->t;
}

int ctx_destroy_ind_table(ibv_rwq_ind_table *ibt)
{
    global &gl = G();
    ind_table_t *t = to_ind(ibt);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (t->users > 0)
        {
            emu_warn("ibv_destroy_rwq_ind_table: still used by %d QP(s): EBUSY", t->users);
            return EBUSY;
        }
        for (wq_t *wq : t->wqs)
            wq->users--;
        gl.objects--;
    }
    context_t *ctx = t->ctx;
    delete t;
    ctx_unref(ctx);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Flow steering                                                            */

ibv_flow *ctx_create_flow(ibv_qp *ibqp, ibv_flow_attr *attr)
{
    global &gl = G();
    if (gl.cfg.no_flow)
        return fail<ibv_flow>(EOPNOTSUPP);
    if (!ibqp || !attr || ibqp->qp_type != IBV_QPT_RAW_PACKET)
        return fail<ibv_flow>(EINVAL);
    if (attr->comp_mask || attr->type != IBV_FLOW_ATTR_NORMAL || attr->port != 1)
    {
        EMU_LOG("create_flow: unsupported attr (comp_mask %u, type %d, port %u)",
                attr->comp_mask, int(attr->type), unsigned(attr->port));
        return fail<ibv_flow>(attr->type != IBV_FLOW_ATTR_NORMAL ? EOPNOTSUPP : EINVAL);
    }
    if (attr->flags & ~uint32_t(IBV_FLOW_ATTR_FLAGS_DONT_TRAP))
        return fail<ibv_flow>(EOPNOTSUPP);
    std::unique_ptr<flow_t> f(new flow_t());
    memset(&f->flow, 0, sizeof(f->flow));
    const uint8_t *base = reinterpret_cast<const uint8_t *>(attr);
    size_t total = attr->size;
    size_t off = sizeof(ibv_flow_attr);
    if (total < off)
        return fail<ibv_flow>(EINVAL);
    for (unsigned i = 0; i < attr->num_of_specs; i++)
    {
        ibv_flow_spec spec_hdr;
        if (off + sizeof(spec_hdr.hdr) > total)
            return fail<ibv_flow>(EINVAL);
        memcpy(&spec_hdr.hdr, base + off, sizeof(spec_hdr.hdr));
        size_t sz = spec_hdr.hdr.size;
        if (sz < sizeof(spec_hdr.hdr) || off + sz > total)
            return fail<ibv_flow>(EINVAL);
        const uint8_t *p = base + off;
        switch (spec_hdr.hdr.type)
        {
        case IBV_FLOW_SPEC_ETH:
        {
            ibv_flow_spec_eth s;
            if (sz != sizeof(s) || f->has_eth)
                return fail<ibv_flow>(EINVAL);
            memcpy(&s, p, sizeof(s));
            f->has_eth = true;
            f->eth_val = s.val;
            f->eth_mask = s.mask;
            break;
        }
        case IBV_FLOW_SPEC_IPV4:
        {
            ibv_flow_spec_ipv4 s;
            if (sz != sizeof(s) || f->has_ip)
                return fail<ibv_flow>(EINVAL);
            memcpy(&s, p, sizeof(s));
            f->has_ip = true;
            f->ip_val.src_ip = s.val.src_ip;
            f->ip_val.dst_ip = s.val.dst_ip;
            f->ip_mask.src_ip = s.mask.src_ip;
            f->ip_mask.dst_ip = s.mask.dst_ip;
            break;
        }
        case IBV_FLOW_SPEC_IPV4_EXT:
        {
            ibv_flow_spec_ipv4_ext s;
            if (sz != sizeof(s) || f->has_ip)
                return fail<ibv_flow>(EINVAL);
            memcpy(&s, p, sizeof(s));
            if (s.mask.flags)
                return fail<ibv_flow>(EOPNOTSUPP);
            f->has_ip = true;
            f->ip_val = s.val;
            f->ip_mask = s.mask;
            break;
        }
        case IBV_FLOW_SPEC_UDP:
        case IBV_FLOW_SPEC_TCP:
        {
            ibv_flow_spec_tcp_udp s;
            if (sz != sizeof(s) || f->has_l4)
                return fail<ibv_flow>(EINVAL);
            memcpy(&s, p, sizeof(s));
            f->has_l4 = true;
            f->l4_proto = spec_hdr.hdr.type == IBV_FLOW_SPEC_UDP ? IPPROTO_UDP : IPPROTO_TCP;
            f->l4_val = s.val;
            f->l4_mask = s.mask;
            break;
        }
        default:
            EMU_LOG("create_flow: unsupported spec type 0x%x", unsigned(spec_hdr.hdr.type));
            return fail<ibv_flow>(EOPNOTSUPP);
        }
        off += sz;
    }
    qp_t *qp = to_qp(ibqp);
    f->qp = qp;
    f->priority = attr->priority;
    f->flow.context = ibqp->context;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.objects >= max_objects)
            return fail<ibv_flow>(ENOMEM);
        sync_wire_locked();
        gl.objects++;
        f->flow.handle = gl.next_num++;
        f->seq = gl.next_flow_seq++;
        qp->users++;
        flow_t *raw = f.get();
        auto pos = std::upper_bound(gl.flows.begin(), gl.flows.end(), raw,
                                    [](const flow_t *a, const flow_t *b)
                                    { return a->priority < b->priority; });
        gl.flows.insert(pos, raw);
        gl.stats.flows = int64_t(gl.flows.size());
    }
    ctx_ref(qp->ctx);
    topology_changed();
    return &f.release()->flow;
}

int ctx_destroy_flow(ibv_flow *ibf)
{
    global &gl = G();
    flow_t *f = to_flow(ibf);
    context_t *ctx;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        sync_wire_locked();
        gl.flows.erase(std::remove(gl.flows.begin(), gl.flows.end(), f), gl.flows.end());
        gl.stats.flows = int64_t(gl.flows.size());
        f->qp->users--;
        ctx = f->qp->ctx;
        gl.objects--;
    }
    delete f;
    ctx_unref(ctx);
    topology_changed();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Extended verbs reached through verbs_context                             */

ibv_cq_ex *ctx_create_cq_ex(ibv_context *context, ibv_cq_init_attr_ex *attr)
{
    if (!attr)
        return fail<ibv_cq_ex>(EINVAL);
    if (attr->comp_mask & ~uint32_t(IBV_CQ_INIT_ATTR_MASK_FLAGS | IBV_CQ_INIT_ATTR_MASK_PD))
        return fail<ibv_cq_ex>(EINVAL);
    if (attr->wc_flags & ~uint64_t(IBV_CREATE_CQ_SUP_WC_FLAGS))
        return fail<ibv_cq_ex>(EOPNOTSUPP);
    if (attr->cqe > uint32_t(INT_MAX))
        return fail<ibv_cq_ex>(EINVAL);
    cq_t *cq = create_cq_impl(context, int(attr->cqe), attr->cq_context, attr->channel,
                              int(attr->comp_vector), true);
    return cq ? &cq->cq : nullptr;
}

ibv_qp *ctx_create_qp_ex(ibv_context *context, ibv_qp_init_attr_ex *attr)
{
    if (!attr)
        return fail<ibv_qp>(EINVAL);
    uint32_t mask = attr->comp_mask;
    if (!(mask & IBV_QP_INIT_ATTR_PD))
        return fail<ibv_qp>(EINVAL);
    if (mask & IBV_QP_INIT_ATTR_XRCD)
        return fail<ibv_qp>(EOPNOTSUPP);
    bool has_ind = mask & IBV_QP_INIT_ATTR_IND_TABLE;
    bool has_hash = mask & IBV_QP_INIT_ATTR_RX_HASH;
    if (has_ind != has_hash)
        return fail<ibv_qp>(EINVAL);
    qp_t *qp = create_qp_common(context, attr->pd, *attr, has_ind, &attr->cap);
    return qp ? &qp->qp : nullptr;
}

}  // anonymous namespace

/* ======================================================================== */
/* Exported libibverbs API                                                  */

EMU_EXPORT ibv_device **ibv_get_device_list(int *num_devices)
{
    global &gl = G();
    ibv_device **list = static_cast<ibv_device **>(calloc(2, sizeof(ibv_device *)));
    if (!list)
    {
        errno = ENOMEM;
        return nullptr;
    }
    const int n = gl.cfg.no_devices ? 0 : 1;
    if (n)
        list[0] = &gl.device;
    if (num_devices)
        *num_devices = n;
    return list;
}

EMU_EXPORT void ibv_free_device_list(ibv_device **list)
{
    free(list);
}

EMU_EXPORT const char *ibv_get_device_name(ibv_device *device)
{
    return device ? device->name : nullptr;
}

EMU_EXPORT __be64 ibv_get_device_guid(ibv_device *device)
{
    (void) device;
    ibv_device_attr a;
    G();
    fill_device_attr(a);
    return a.node_guid;
}

EMU_EXPORT int ibv_fork_init(void)
{
    return 0;
}

EMU_EXPORT const char *ibv_wc_status_str(enum ibv_wc_status status)
{
    switch (status)
    {
    case IBV_WC_SUCCESS: return "success";
    case IBV_WC_LOC_LEN_ERR: return "local length error";
    case IBV_WC_LOC_PROT_ERR: return "local protection error";
    case IBV_WC_LOC_QP_OP_ERR: return "local QP operation error";
    case IBV_WC_WR_FLUSH_ERR: return "Work Request Flushed Error";
    default: return "unknown";
    }
}

EMU_EXPORT ibv_context *ibv_open_device(ibv_device *device)
{
    global &gl = G();
    if (device != &gl.device)
    {
        errno = ENODEV;
        return nullptr;
    }
    return &open_context()->vctx.context;
}

EMU_EXPORT int ibv_close_device(ibv_context *context)
{
    G();
    if (!is_our_context(context))
        return EINVAL;
    ctx_unref(to_ctx(context));   // freed once the last object is destroyed
    return 0;
}

EMU_EXPORT int ibv_query_device(ibv_context *context, ibv_device_attr *device_attr)
{
    G();
    if (!is_our_context(context) || !device_attr)
        return EINVAL;
    fill_device_attr(*device_attr);
    return 0;
}

/* The compat entry point the inline ___ibv_query_port falls back to when
 * verbs_context::query_port is absent.  struct _compat_ibv_port_attr is the
 * old layout: a prefix of struct ibv_port_attr ending with link_layer. */
EMU_EXPORT int (ibv_query_port)(ibv_context *context, uint8_t port_num,
                                struct _compat_ibv_port_attr *port_attr)
{
    G();
    if (!is_our_context(context) || !port_attr)
        return EINVAL;
    if (port_num != 1)
        return EINVAL;
    ibv_port_attr p;
    memset(&p, 0, sizeof(p));
    fill_port_attr(p);
    memcpy(port_attr, &p, offsetof(ibv_port_attr, link_layer) + sizeof(p.link_layer));
    return 0;
}

EMU_EXPORT int ibv_query_gid(ibv_context *context, uint8_t port_num, int index, union ibv_gid *gid)
{
    global &gl = G();
    if (!is_our_context(context) || port_num != 1 || index != 0 || !gid)
        return -1;
    memset(gid, 0, sizeof(*gid));
    gid->raw[10] = 0xff;
    gid->raw[11] = 0xff;
    memcpy(&gid->raw[12], &gl.cfg.iface, 4);
    return 0;
}

EMU_EXPORT ibv_pd *ibv_alloc_pd(ibv_context *context)
{
    global &gl = G();
    if (!is_our_context(context))
        return fail<ibv_pd>(EINVAL);
    pd_t *pd = new pd_t();
    memset(&pd->pd, 0, sizeof(pd->pd));
    pd->ctx = to_ctx(context);
    pd->pd.context = context;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (gl.objects >= max_objects)
        {
            delete pd;
            return fail<ibv_pd>(ENOMEM);
        }
        gl.objects++;
        pd->pd.handle = gl.next_num++;
    }
    ctx_ref(pd->ctx);
    return &pd->pd;
}

EMU_EXPORT int ibv_dealloc_pd(ibv_pd *ibpd)
{
    global &gl = G();
    pd_t *pd = to_pd(ibpd);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (pd->users > 0)
        {
            emu_warn("ibv_dealloc_pd: PD still used by %d object(s): EBUSY", pd->users);
            return EBUSY;
        }
        gl.objects--;
    }
    context_t *ctx = pd->ctx;
    delete pd;
    ctx_unref(ctx);
    return 0;
}

namespace
{

/* Whether the mapping holding addr is marked "do not copy on fork"
 * (VmFlags "dc" in /proc/self/smaps). */
bool is_dontfork(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return false;
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    char line[512];
    bool inside = false, result = false;
    while (fgets(line, sizeof(line), f))
    {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = a >= lo && a < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0)
        {
            result = strstr(line, " dc") != nullptr;
            break;
        }
    }
    fclose(f);
    return result;
}

ibv_mr *reg_mr_impl(ibv_pd *ibpd, void *addr, size_t length, uint64_t iova, unsigned int access)
{
    global &gl = G();
    if (!ibpd || !is_our_context(ibpd->context))
        return fail<ibv_mr>(EINVAL);
    if (length == 0 || !addr || length > gl.cfg.max_mr_size)
        return fail<ibv_mr>(EINVAL);
    if ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE))
        return fail<ibv_mr>(EINVAL);
    pd_t *pd = to_pd(ibpd);
    mr_t *mr = new mr_t();
    memset(&mr->mr, 0, sizeof(mr->mr));
    mr->pd = pd;
    mr->iova = iova;
    mr->access = int(access);
    mr->mr.context = ibpd->context;
    mr->mr.pd = ibpd;
    mr->mr.addr = addr;
    mr->mr.length = length;
    mr->relaxed = access & IBV_ACCESS_RELAXED_ORDERING;
    mr->dontfork = is_dontfork(addr);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        mr->pinned = length;
        if (gl.objects >= max_objects || !charge_pinned(mr->pinned))
        {
            delete mr;
            return fail<ibv_mr>(ENOMEM);
        }
        gl.objects++;
        uint32_t key;
        do
        {
            key = (gl.next_key++ << 8) | 0x5a;
        } while (key == 0 || gl.mrs.count(key));
        mr->mr.lkey = mr->mr.rkey = key;
        mr->mr.handle = gl.next_num++;
        gl.mrs[key] = mr;
        gl.stats.mrs_relaxed += mr->relaxed;
        gl.stats.mrs_dontfork += mr->dontfork;
        pd->users++;
    }
    ctx_ref(pd->ctx);
    return &mr->mr;
}

}  // anonymous namespace

EMU_EXPORT ibv_mr *(ibv_reg_mr)(ibv_pd *pd, void *addr, size_t length, int access)
{
    return reg_mr_impl(pd, addr, length, reinterpret_cast<uintptr_t>(addr), unsigned(access));
}

EMU_EXPORT ibv_mr *ibv_reg_mr_iova2(ibv_pd *pd, void *addr, size_t length, uint64_t iova,
                                    unsigned int access)
{
    return reg_mr_impl(pd, addr, length, iova, access);
}

EMU_EXPORT ibv_mr *(ibv_reg_mr_iova)(ibv_pd *pd, void *addr, size_t length, uint64_t iova,
                                     int access)
{
    return reg_mr_impl(pd, addr, length, iova, unsigned(access));
}

EMU_EXPORT int ibv_dereg_mr(ibv_mr *ibmr)
{
    global &gl = G();
    mr_t *mr = to_mr(ibmr);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        gl.mrs.erase(mr->mr.lkey);
        gl.stats.mrs_relaxed -= mr->relaxed;
        gl.stats.mrs_dontfork -= mr->dontfork;
        uncharge_pinned(mr->pinned);
        mr->pd->users--;
        gl.objects--;
    }
    context_t *ctx = mr->pd->ctx;
    delete mr;
    ctx_unref(ctx);
    return 0;
}

EMU_EXPORT ibv_comp_channel *ibv_create_comp_channel(ibv_context *context)
{
    global &gl = G();
    if (!is_our_context(context))
        return fail<ibv_comp_channel>(EINVAL);
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
    if (fd < 0)
        return nullptr;
    channel_t *ch = new channel_t();
    memset(&ch->ch, 0, sizeof(ch->ch));
    ch->ctx = to_ctx(context);
    ch->ch.context = context;
    ch->ch.fd = fd;
    ch->ch.refcnt = 0;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        gl.objects++;
    }
    ctx_ref(ch->ctx);
    return &ch->ch;
}

EMU_EXPORT int ibv_destroy_comp_channel(ibv_comp_channel *channel)
{
    global &gl = G();
    channel_t *ch = to_channel(channel);
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (ch->users > 0)
        {
            emu_warn("ibv_destroy_comp_channel: still used by %d CQ(s): EBUSY", ch->users);
            return EBUSY;
        }
        gl.objects--;
    }
    close(ch->ch.fd);
    context_t *ctx = ch->ctx;
    delete ch;
    ctx_unref(ctx);
    return 0;
}

EMU_EXPORT ibv_cq *(ibv_create_cq)(ibv_context *context, int cqe, void *cq_context,
                                   ibv_comp_channel *channel, int comp_vector)
{
    cq_t *cq = create_cq_impl(context, cqe, cq_context, channel, comp_vector, false);
    return cq ? ibv_cq_ex_to_cq(&cq->cq) : nullptr;
}

EMU_EXPORT int ibv_destroy_cq(ibv_cq *cq)
{
    return destroy_cq_impl(cq);
}

EMU_EXPORT int ibv_get_cq_event(ibv_comp_channel *channel, ibv_cq **cq, void **cq_context)
{
    channel_t *ch = to_channel(channel);
    uint64_t v;
    ssize_t r = read(ch->ch.fd, &v, sizeof(v));
    if (r != sizeof(v))
    {
        if (r >= 0)
            errno = EIO;
        return -1;
    }
    std::lock_guard<std::mutex> lock(ch->mu);
    if (ch->events.empty())
    {
        errno = EAGAIN;
        return -1;
    }
    cq_t *c = ch->events.front();
    ch->events.pop_front();
    pthread_mutex_lock(&c->cq.mutex);
    c->comp_events_reported++;
    pthread_mutex_unlock(&c->cq.mutex);
    *cq = ibv_cq_ex_to_cq(&c->cq);
    *cq_context = c->cq.cq_context;
    return 0;
}

EMU_EXPORT void ibv_ack_cq_events(ibv_cq *cq, unsigned int nevents)
{
    pthread_mutex_lock(&cq->mutex);
    cq->comp_events_completed += nevents;
    pthread_cond_broadcast(&cq->cond);
    pthread_mutex_unlock(&cq->mutex);
}

EMU_EXPORT int ibv_get_async_event(ibv_context *context, ibv_async_event *event)
{
    G();
    if (!is_our_context(context) || !event)
    {
        errno = EINVAL;
        return -1;
    }
    context_t *ctx = to_ctx(context);
    uint64_t v;
    ssize_t r = read(context->async_fd, &v, sizeof(v));
    if (r != sizeof(v))
    {
        if (r >= 0)
            errno = EIO;
        return -1;
    }
    std::lock_guard<std::mutex> lock(ctx->amu);
    if (ctx->async_events.empty())
    {
        errno = EAGAIN;
        return -1;
    }
    *event = ctx->async_events.front();
    ctx->async_events.pop_front();
    if (event->event_type == IBV_EVENT_CQ_ERR)
    {
        // Still alive: destroy_cq removes the events of its CQ under amu.
        cq_t *c = to_cq(event->element.cq);
        pthread_mutex_lock(&c->cq.mutex);
        c->async_events_reported++;
        pthread_mutex_unlock(&c->cq.mutex);
    }
    return 0;
}

EMU_EXPORT void ibv_ack_async_event(ibv_async_event *event)
{
    if (event && event->event_type == IBV_EVENT_CQ_ERR && event->element.cq)
    {
        ibv_cq *cq = event->element.cq;
        pthread_mutex_lock(&cq->mutex);
        cq->async_events_completed++;
        pthread_cond_broadcast(&cq->cond);
        pthread_mutex_unlock(&cq->mutex);
    }
}

EMU_EXPORT const char *ibv_event_type_str(enum ibv_event_type event)
{
    switch (event)
    {
    case IBV_EVENT_CQ_ERR: return "CQ error";
    case IBV_EVENT_QP_FATAL: return "local work queue catastrophic error";
    case IBV_EVENT_WQ_FATAL: return "WQ fatal";
    case IBV_EVENT_DEVICE_FATAL: return "local catastrophic error";
    case IBV_EVENT_PORT_ERR: return "port error";
    default: return "unknown";
    }
}

EMU_EXPORT ibv_qp *ibv_create_qp(ibv_pd *pd, ibv_qp_init_attr *qp_init_attr)
{
    if (!pd || !qp_init_attr)
    {
        errno = EINVAL;
        return nullptr;
    }
    ibv_qp_init_attr_ex a;
    memset(&a, 0, sizeof(a));
    a.qp_context = qp_init_attr->qp_context;
    a.send_cq = qp_init_attr->send_cq;
    a.recv_cq = qp_init_attr->recv_cq;
    a.srq = qp_init_attr->srq;
    a.cap = qp_init_attr->cap;
    a.qp_type = qp_init_attr->qp_type;
    a.sq_sig_all = qp_init_attr->sq_sig_all;
    a.comp_mask = IBV_QP_INIT_ATTR_PD;
    a.pd = pd;
    qp_t *qp = create_qp_common(pd->context, pd, a, false, &qp_init_attr->cap);
    return qp ? &qp->qp : nullptr;
}

EMU_EXPORT int ibv_destroy_qp(ibv_qp *qp)
{
    return destroy_qp_impl(qp);
}

EMU_EXPORT int ibv_modify_qp(ibv_qp *qp, ibv_qp_attr *attr, int attr_mask)
{
    if (!qp || !attr)
        return EINVAL;
    return modify_qp_impl(qp, attr, attr_mask);
}

/* ======================================================================== */
/* Exported librdmacm API                                                   */

EMU_EXPORT rdma_event_channel *rdma_create_event_channel(void)
{
    G();
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return nullptr;
    rdma_event_channel *ch = static_cast<rdma_event_channel *>(calloc(1, sizeof(*ch)));
    if (!ch)
    {
        close(fd);
        errno = ENOMEM;
        return nullptr;
    }
    ch->fd = fd;
    return ch;
}

EMU_EXPORT void rdma_destroy_event_channel(rdma_event_channel *channel)
{
    if (!channel)
        return;
    close(channel->fd);
    free(channel);
}

EMU_EXPORT int rdma_create_id(rdma_event_channel *channel, rdma_cm_id **id, void *context,
                              enum rdma_port_space ps)
{
    G();
    if (!id)
    {
        errno = EINVAL;
        return -1;
    }
    cm_id_t *c = new cm_id_t();
    memset(&c->id, 0, sizeof(c->id));
    c->id.channel = channel;
    c->id.context = context;
    c->id.ps = ps;
    c->id.qp_type = ps == RDMA_PS_TCP ? IBV_QPT_RC : IBV_QPT_UD;
    *id = &c->id;
    return 0;
}

EMU_EXPORT int rdma_bind_addr(rdma_cm_id *id, sockaddr *addr)
{
    global &gl = G();
    if (!id || !addr)
    {
        errno = EINVAL;
        return -1;
    }
    if (gl.cfg.no_devices || addr->sa_family != AF_INET
        || reinterpret_cast<const sockaddr_in *>(addr)->sin_addr.s_addr != gl.cfg.iface)
    {
        errno = ENODEV;
        return -1;
    }
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        if (!gl.cm_ctx)
        {
            gl.cm_ctx = open_context();
            ctx_ref(gl.cm_ctx);     // permanent reference: shared by all ids
        }
        id->verbs = &gl.cm_ctx->vctx.context;
    }
    id->port_num = 1;
    memcpy(&id->route.addr.src_sin, addr, sizeof(sockaddr_in));
    return 0;
}

EMU_EXPORT int rdma_destroy_id(rdma_cm_id *id)
{
    if (!id)
    {
        errno = EINVAL;
        return -1;
    }
    delete reinterpret_cast<cm_id_t *>(id);
    return 0;
}

/* ======================================================================== */
/* Exported libmlx5 API                                                     */

EMU_EXPORT bool mlx5dv_is_supported(ibv_device *device)
{
    global &gl = G();
    return device == &gl.device && !gl.cfg.no_mprq;
}

EMU_EXPORT int mlx5dv_query_device(ibv_context *ctx_in, mlx5dv_context *attrs_out)
{
    global &gl = G();
    if (!is_our_context(ctx_in) || !attrs_out)
        return EINVAL;
    if (gl.cfg.no_mprq)
        return EOPNOTSUPP;
    uint64_t requested = attrs_out->comp_mask;
    attrs_out->version = 0;
    attrs_out->flags = gl.cfg.no_mpw ? 0 : MLX5DV_CONTEXT_FLAGS_MPW_ALLOWED;
    attrs_out->comp_mask = 0;
    if (requested & MLX5DV_CONTEXT_MASK_STRIDING_RQ)
    {
        mlx5dv_striding_rq_caps &c = attrs_out->striding_rq_caps;
        c.min_single_stride_log_num_of_bytes = min_stride_log;
        c.max_single_stride_log_num_of_bytes = max_stride_log;
        c.min_single_wqe_log_num_of_strides = min_strides_log;
        c.max_single_wqe_log_num_of_strides = max_strides_log;
        c.supported_qpts = 1u << IBV_QPT_RAW_PACKET;
        attrs_out->comp_mask |= MLX5DV_CONTEXT_MASK_STRIDING_RQ;
    }
    return 0;
}

EMU_EXPORT ibv_wq *mlx5dv_create_wq(ibv_context *context, ibv_wq_init_attr *wq_init_attr,
                                    mlx5dv_wq_init_attr *mlx5_wq_attr)
{
    global &gl = G();
    if (gl.cfg.no_mprq)
    {
        errno = EOPNOTSUPP;
        return nullptr;
    }
    wq_t *wq = create_wq_impl(context, wq_init_attr, mlx5_wq_attr);
    return wq ? &wq->wq : nullptr;
}

EMU_EXPORT int mlx5dv_init_obj(mlx5dv_obj *obj, uint64_t obj_type)
{
    global &gl = G();
    if (gl.cfg.no_mprq)
        return EOPNOTSUPP;
    if (!obj || (obj_type & ~uint64_t(MLX5DV_OBJ_RWQ)))
        return EOPNOTSUPP;
    if (obj_type & MLX5DV_OBJ_RWQ)
    {
        if (!obj->rwq.in || !obj->rwq.out)
            return EINVAL;
        wq_t *wq = to_wq(obj->rwq.in);
        if (!wq->rx.striding)
            return EOPNOTSUPP;
        mlx5dv_rwq *out = obj->rwq.out;
        out->buf = wq->rx.buf;
        out->dbrec = reinterpret_cast<__be32 *>(wq->rx.dbrec);
        out->wqe_cnt = wq->rx.wqe_cnt;
        out->stride = sizeof(mlx5_mprq_wqe);
        out->comp_mask = 0;
    }
    return 0;
}

/* ======================================================================== */
/* Emulator extras                                                          */

EMU_EXPORT int spead2_emu_stats(char *buf, size_t len)
{
    global &gl = G();
    // Under the device lock: a frame counted in "received" has been fully
    // processed (its other counter and its completion are visible).
    std::lock_guard<std::mutex> lock(gl.mu);
    return gl.stats.format(buf, len);
}

EMU_EXPORT int spead2_emu_inject(const void *frame, size_t len)
{
    global &gl = G();
    result r;
    {
        std::lock_guard<std::mutex> lock(gl.mu);
        sync_wire_locked();
        bump(gl.stats.received);
        r = process_frame(static_cast<const uint8_t *>(frame), len, false);
    }
    stats_changed_offthread();
    return r == result::delivered ? 0 : 1;
}

EMU_EXPORT int spead2_emu_nic_running(void)
{
    return g && g->nic_running.load() ? 1 : 0;
}

__attribute__((destructor)) static void spead2_emu_fini()
{
    if (!g)
        return;
    {
        std::lock_guard<std::mutex> tl(g->thread_mu);
        stop_nic_locked();
    }
    write_stats_file();
}
