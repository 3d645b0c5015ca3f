/* Self-test of the emulated RDMA NIC (libspead2_ibv_emulator.so).
 *
 * Linked directly against the emulator (not through dlopen).  Uses the
 * standard verbs / rdmacm / mlx5dv API and the static inline helpers of the
 * system headers exactly as a production receiver does.
 *
 * The parent process configures the emulator through the environment (UDP
 * wire on a free loopback port, stats file) and runs the in-process cases;
 * cases that need a different configuration (NO_MPRQ, NO_FLOW, NO_RAW,
 * limits, pcap wire) re-execute this binary with "--case NAME" and their own
 * environment.  Ends with the line "N passed, M failed".
 */

#include "spead2_emu.h"

#include <infiniband/verbs.h>
#include <infiniband/mlx5dv.h>
#include <rdma/rdma_cma.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <endian.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

extern char **environ;

namespace
{

/* ------------------------------------------------------------------------ */
/* Minimal test harness                                                     */

int g_case_failures = 0;

#define CHECK(cond, ...) check_impl(bool(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)

void check_impl(bool ok, const char *expr, const char *file, int line, const char *fmt, ...)
{
    if (ok)
        return;
    g_case_failures++;
    char msg[512] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    printf("    FAILED %s:%d: %s %s\n", file, line, expr, msg);
    fflush(stdout);
}

#define REQUIRE(cond, ...) do { CHECK(cond, __VA_ARGS__); if (!(cond)) return; } while (0)
/* REQUIRE for a condition with side effects: evaluated once. */
#define REQUIRE_ONCE(cond) do { const bool ok_ = bool(cond); CHECK(ok_, "%s", #cond); if (!ok_) return; } while (0)

constexpr uint8_t our_mac[6] = {0x02, 0, 0, 0, 0, 0x01};
constexpr uint8_t other_mac[6] = {0x02, 0, 0, 0, 0, 0x77};
const uint32_t our_ip = 0x7f000001;       // 127.0.0.1 (host order)
const uint32_t other_ip = 0x7f000009;     // 127.0.0.9
int g_wire_port = 0;
std::string g_stats_path;
int g_udp_fd = -1;

/* ------------------------------------------------------------------------ */
/* Frames                                                                   */

constexpr size_t hdr_len = 14 + 20 + 8;

/* An Ethernet/IPv4/UDP frame of total length len (>= hdr_len); the payload
 * starts with the 32-bit tag, then a byte pattern derived from it. */
std::vector<uint8_t> make_frame(size_t len, uint32_t tag, uint16_t dst_port = 7148,
                                uint32_t dst_ip = our_ip, const uint8_t *dst_mac = our_mac,
                                uint16_t ethertype = 0x0800)
{
    std::vector<uint8_t> f(len, 0);
    memcpy(&f[0], dst_mac, 6);
    const uint8_t src_mac[6] = {0x02, 0, 0, 0, 0, 0x99};
    memcpy(&f[6], src_mac, 6);
    f[12] = uint8_t(ethertype >> 8);
    f[13] = uint8_t(ethertype);
    uint8_t *ip = &f[14];
    ip[0] = 0x45;
    uint16_t tot = htons(uint16_t(len - 14));
    memcpy(ip + 2, &tot, 2);
    ip[8] = 64;
    ip[9] = 17;
    uint32_t src = htonl(0x7f000002), dst = htonl(dst_ip);
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    uint8_t *udp = ip + 20;
    uint16_t sport = htons(9999), dport = htons(dst_port), ulen = htons(uint16_t(len - 34));
    memcpy(udp, &sport, 2);
    memcpy(udp + 2, &dport, 2);
    memcpy(udp + 4, &ulen, 2);
    if (len >= hdr_len + 4)
        memcpy(&f[hdr_len], &tag, 4);
    for (size_t i = hdr_len + 4; i < len; i++)
        f[i] = uint8_t(tag * 7 + i);
    return f;
}

void send_frame(const std::vector<uint8_t> &f)
{
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(g_wire_port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ssize_t r = sendto(g_udp_fd, f.data(), f.size(), 0, reinterpret_cast<sockaddr *>(&a), sizeof(a));
    CHECK(r == ssize_t(f.size()), "sendto: %s", strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* Counters                                                                 */

using stats_map = std::map<std::string, uint64_t>;

stats_map parse_stats(const std::string &s)
{
    stats_map m;
    size_t pos = 0;
    while ((pos = s.find('"', pos)) != std::string::npos)
    {
        size_t end = s.find('"', pos + 1);
        if (end == std::string::npos)
            break;
        std::string key = s.substr(pos + 1, end - pos - 1);
        size_t colon = s.find(':', end);
        if (colon == std::string::npos)
            break;
        m[key] = strtoull(s.c_str() + colon + 1, nullptr, 10);
        pos = s.find_first_of(",}", colon);
        if (pos == std::string::npos)
            break;
    }
    return m;
}

stats_map read_stats_file()
{
    FILE *f = fopen(g_stats_path.c_str(), "r");
    if (!f)
        return {};
    char buf[8192] = "";
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return parse_stats(buf);
}

stats_map stats()
{
    char buf[8192];
    int n = spead2_emu_stats(buf, sizeof(buf));
    CHECK(n > 0 && size_t(n) < sizeof(buf));
    return parse_stats(buf);
}

int64_t delta(const stats_map &after, const stats_map &before, const char *key)
{
    return int64_t(after.at(key)) - int64_t(before.at(key));
}

/* Waits until the NIC has taken `target` frames in total off the wire (all
 * of them fully processed: the snapshot is taken under the device lock). */
bool wait_received(uint64_t target, int timeout_ms = 5000)
{
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < end)
    {
        if (stats()["received"] >= target)
            return true;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Completions                                                              */

struct cqe
{
    uint64_t wr_id;
    ibv_wc_status status;
    ibv_wc_opcode opcode;
    uint32_t byte_len;
    uint32_t qp_num;
};

/* Drains what is in an extended CQ right now. */
void drain_ex(ibv_cq_ex *cq, std::vector<cqe> &out)
{
    ibv_poll_cq_attr attr{};
    if (ibv_start_poll(cq, &attr) != 0)
        return;
    do
    {
        out.push_back({cq->wr_id, cq->status, ibv_wc_read_opcode(cq), ibv_wc_read_byte_len(cq),
                       ibv_wc_read_qp_num(cq)});
        (void) ibv_wc_read_wc_flags(cq);
        (void) ibv_wc_read_completion_ts(cq);
    } while (ibv_next_poll(cq) == 0);
    ibv_end_poll(cq);
}

std::vector<cqe> poll_ex(ibv_cq_ex *cq, size_t want, int timeout_ms = 3000)
{
    std::vector<cqe> out;
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (out.size() < want && std::chrono::steady_clock::now() < end)
    {
        size_t before = out.size();
        drain_ex(cq, out);
        if (out.size() == before)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return out;
}

std::vector<ibv_wc> poll_plain(ibv_cq *cq, size_t want, int timeout_ms = 3000)
{
    std::vector<ibv_wc> out;
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (out.size() < want && std::chrono::steady_clock::now() < end)
    {
        ibv_wc wc[8];
        int n = ibv_poll_cq(cq, 8, wc);
        CHECK(n >= 0);
        if (n <= 0)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        for (int i = 0; i < n; i++)
            out.push_back(wc[i]);
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Device discovery the way the production code does it                    */

ibv_context *bind_device(rdma_event_channel **ch_out, rdma_cm_id **id_out,
                         const char *addr = "127.0.0.1")
{
    rdma_event_channel *ch = rdma_create_event_channel();
    CHECK(ch != nullptr);
    rdma_cm_id *id = nullptr;
    CHECK(rdma_create_id(ch, &id, nullptr, RDMA_PS_UDP) == 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, addr, &a.sin_addr);
    int r = rdma_bind_addr(id, reinterpret_cast<sockaddr *>(&a));
    CHECK(r == 0, "rdma_bind_addr(%s): %s", addr, strerror(errno));
    *ch_out = ch;
    *id_out = id;
    return r == 0 ? id->verbs : nullptr;
}

void unbind_device(rdma_event_channel *ch, rdma_cm_id *id)
{
    CHECK(rdma_destroy_id(id) == 0);
    rdma_destroy_event_channel(ch);
}

/* Flow rule: Ethernet dst MAC + IPv4 dst + UDP dst port, all fully masked
 * (any of them may be left out). */
struct flow_rule
{
    ibv_flow_attr attr;
    ibv_flow_spec_eth eth;
    ibv_flow_spec_ipv4 ip;
    ibv_flow_spec_tcp_udp udp;
};
// The specs follow the attr back to back, as the kernel ABI wants.
static_assert(sizeof(flow_rule) == sizeof(ibv_flow_attr) + sizeof(ibv_flow_spec_eth)
              + sizeof(ibv_flow_spec_ipv4) + sizeof(ibv_flow_spec_tcp_udp), "padding");

ibv_flow *create_flow(ibv_qp *qp, const uint8_t *mac, uint32_t ip, int port, uint16_t priority = 0)
{
    flow_rule r;
    memset(&r, 0, sizeof(r));
    uint8_t *p = reinterpret_cast<uint8_t *>(&r.eth);
    r.attr.type = IBV_FLOW_ATTR_NORMAL;
    r.attr.priority = priority;
    r.attr.port = 1;
    r.attr.size = sizeof(ibv_flow_attr);
    if (mac)
    {
        ibv_flow_spec_eth e{};
        e.type = IBV_FLOW_SPEC_ETH;
        e.size = sizeof(e);
        memcpy(e.val.dst_mac, mac, 6);
        memset(e.mask.dst_mac, 0xff, 6);
        memcpy(p, &e, sizeof(e));
        p += sizeof(e);
        r.attr.num_of_specs++;
        r.attr.size += sizeof(e);
    }
    if (ip)
    {
        ibv_flow_spec_ipv4 s{};
        s.type = IBV_FLOW_SPEC_IPV4;
        s.size = sizeof(s);
        s.val.dst_ip = htonl(ip);
        s.mask.dst_ip = 0xffffffff;
        memcpy(p, &s, sizeof(s));
        p += sizeof(s);
        r.attr.num_of_specs++;
        r.attr.size += sizeof(s);
    }
    if (port >= 0)
    {
        ibv_flow_spec_tcp_udp s{};
        s.type = IBV_FLOW_SPEC_UDP;
        s.size = sizeof(s);
        s.val.dst_port = htons(uint16_t(port));
        s.mask.dst_port = 0xffff;
        memcpy(p, &s, sizeof(s));
        p += sizeof(s);
        r.attr.num_of_specs++;
        r.attr.size += sizeof(s);
    }
    return ibv_create_flow(qp, &r.attr);
}

/* ------------------------------------------------------------------------ */
/* The MPRQ receiver stack, built as spead2's MPRQ reader builds it         */

struct mprq_stack
{
    ibv_context *ctx = nullptr;
    ibv_pd *pd = nullptr;
    ibv_comp_channel *channel = nullptr;
    ibv_cq_ex *cq = nullptr;
    ibv_wq *wq = nullptr;
    ibv_rwq_ind_table *ind = nullptr;
    ibv_qp *qp = nullptr;
    ibv_flow *flow = nullptr;
    ibv_mr *mr = nullptr;
    uint8_t *mem = nullptr;
    size_t mem_size = 0;
    mlx5dv_rwq rwq{};
    uint32_t stride_log = 6, strides_log = 3;
    uint32_t wqe_size = 0;
    uint32_t nslots = 0;
    uint32_t head = 0;
    int cq_context_tag = 0;

    bool build(ibv_context *c, uint32_t max_wr, int cqe, int port, bool with_channel,
               uint32_t nslots_ = 0)
    {
        ctx = c;
        pd = ibv_alloc_pd(ctx);
        CHECK(pd);
        if (with_channel)
        {
            channel = ibv_create_comp_channel(ctx);
            CHECK(channel);
        }
        ibv_cq_init_attr_ex cattr{};
        cattr.cqe = uint32_t(cqe);
        cattr.cq_context = &cq_context_tag;
        cattr.channel = channel;
        cattr.comp_vector = 1;
        cattr.wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_COMPLETION_TIMESTAMP;
        cattr.comp_mask = IBV_CQ_INIT_ATTR_MASK_FLAGS;
        cattr.flags = IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
        cq = ibv_create_cq_ex(ctx, &cattr);
        CHECK(cq, "ibv_create_cq_ex: %s", strerror(errno));
        if (!pd || !cq)
            return false;

        ibv_wq_init_attr wattr{};
        wattr.wq_type = IBV_WQT_RQ;
        wattr.max_wr = max_wr;
        wattr.max_sge = 1;
        wattr.pd = pd;
        wattr.cq = ibv_cq_ex_to_cq(cq);
        mlx5dv_wq_init_attr mattr{};
        mattr.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
        mattr.striding_rq_attrs.single_stride_log_num_of_bytes = stride_log;
        mattr.striding_rq_attrs.single_wqe_log_num_of_strides = strides_log;
        mattr.striding_rq_attrs.two_byte_shift_en = 0;
        wq = mlx5dv_create_wq(ctx, &wattr, &mattr);
        CHECK(wq, "mlx5dv_create_wq: %s", strerror(errno));
        if (!wq)
            return false;
        CHECK(wq->state == IBV_WQS_RESET);

        mlx5dv_obj obj{};
        obj.rwq.in = wq;
        obj.rwq.out = &rwq;
        CHECK(mlx5dv_init_obj(&obj, MLX5DV_OBJ_RWQ) == 0);
        CHECK(rwq.stride == 32);
        CHECK(rwq.wqe_cnt >= max_wr && (rwq.wqe_cnt & (rwq.wqe_cnt - 1)) == 0);
        CHECK(rwq.buf && rwq.dbrec);

        wqe_size = 1u << (stride_log + strides_log);
        nslots = nslots_ ? nslots_ : rwq.wqe_cnt;
        mem_size = size_t(wqe_size) * nslots;
        mem = static_cast<uint8_t *>(aligned_alloc(4096, (mem_size + 4095) / 4096 * 4096));
        memset(mem, 0, mem_size);
        mr = ibv_reg_mr(pd, mem, mem_size, IBV_ACCESS_LOCAL_WRITE);
        CHECK(mr, "ibv_reg_mr: %s", strerror(errno));

        ibv_wq *wqs[1] = {wq};
        ibv_rwq_ind_table_init_attr iattr{};
        iattr.log_ind_tbl_size = 0;
        iattr.ind_tbl = wqs;
        ind = ibv_create_rwq_ind_table(ctx, &iattr);
        CHECK(ind);

        static uint8_t key[40] = {1};
        ibv_qp_init_attr_ex qattr{};
        qattr.qp_type = IBV_QPT_RAW_PACKET;
        qattr.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH;
        qattr.pd = pd;
        qattr.rwq_ind_tbl = ind;
        qattr.rx_hash_conf.rx_hash_function = IBV_RX_HASH_FUNC_TOEPLITZ;
        qattr.rx_hash_conf.rx_hash_key_len = sizeof(key);
        qattr.rx_hash_conf.rx_hash_key = key;
        qattr.rx_hash_conf.rx_hash_fields_mask = 0;
        qp = ibv_create_qp_ex(ctx, &qattr);
        CHECK(qp, "ibv_create_qp_ex: %s", strerror(errno));
        if (port >= 0 && qp)
        {
            flow = create_flow(qp, our_mac, our_ip, port);
            CHECK(flow, "ibv_create_flow: %s", strerror(errno));
        }
        return mr && ind && qp && (port < 0 || flow);
    }

    uint64_t slot_addr(uint64_t seq) const
    {
        return reinterpret_cast<uintptr_t>(mem) + (seq % nslots) * wqe_size;
    }

    /* Posts one WQE by hand, exactly as the production code does. */
    void post(uint64_t addr, uint32_t lkey, uint32_t bytes)
    {
        auto *e = reinterpret_cast<mlx5_mprq_wqe *>(
            static_cast<uint8_t *>(rwq.buf) + size_t(head & (rwq.wqe_cnt - 1)) * rwq.stride);
        memset(&e->nseg, 0, sizeof(e->nseg));
        e->dseg.byte_count = htobe32(bytes);
        e->dseg.lkey = htobe32(lkey);
        e->dseg.addr = htobe64(addr);
        head++;
        __atomic_store_n(&rwq.dbrec[MLX5_RCV_DBR], htobe32(head & 0xffff), __ATOMIC_RELEASE);
    }

    void post_next()
    {
        post(slot_addr(head), mr->lkey, wqe_size);
    }

    /* Like production code: RESET -> RDY zeroes the doorbell record, so
     * WQEs are posted only once the WQ is ready, counting from 0 again. */
    int set_state(ibv_wq_state s)
    {
        ibv_wq_attr a{};
        a.attr_mask = IBV_WQ_ATTR_STATE;
        a.wq_state = s;
        const bool from_reset = wq->state == IBV_WQS_RESET;
        int r = ibv_modify_wq(wq, &a);
        if (r == 0 && s == IBV_WQS_RDY && from_reset)
            head = 0;
        return r;
    }

    void destroy()
    {
        if (flow)
            CHECK(ibv_destroy_flow(flow) == 0);
        if (qp)
            CHECK(ibv_destroy_qp(qp) == 0);
        if (ind)
            CHECK(ibv_destroy_rwq_ind_table(ind) == 0);
        if (wq)
            CHECK(ibv_destroy_wq(wq) == 0);
        if (cq)
            CHECK(ibv_destroy_cq(ibv_cq_ex_to_cq(cq)) == 0);
        if (channel)
            CHECK(ibv_destroy_comp_channel(channel) == 0);
        if (mr)
            CHECK(ibv_dereg_mr(mr) == 0);
        if (pd)
            CHECK(ibv_dealloc_pd(pd) == 0);
        free(mem);
        *this = mprq_stack();
    }
};

/* Checks that the frame's bytes sit at the given host address. */
bool frame_at(uint64_t addr, const std::vector<uint8_t> &f)
{
    return memcmp(reinterpret_cast<const void *>(uintptr_t(addr)), f.data(), f.size()) == 0;
}

uint32_t strides_of(uint32_t byte_len) { return (byte_len >> 16) & 0x7fff; }
bool is_filler(uint32_t byte_len) { return byte_len & 0x80000000u; }

/* ------------------------------------------------------------------------ */
/* In-process cases                                                         */

void case_discovery()
{
    int n = -1;
    ibv_device **list = ibv_get_device_list(&n);
    REQUIRE(list && n == 1);
    CHECK(list[1] == nullptr);
    CHECK(strcmp(ibv_get_device_name(list[0]), "emu0") == 0);
    CHECK(mlx5dv_is_supported(list[0]));
    ibv_context *c = ibv_open_device(list[0]);
    CHECK(c && c->device == list[0]);
    ibv_device *dev = list[0];
    ibv_free_device_list(list);
    if (c)
        CHECK(ibv_close_device(c) == 0);

    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    CHECK(ctx->device == dev);
    CHECK(id->port_num == 1);
    CHECK(id->route.addr.src_sin.sin_addr.s_addr == htonl(our_ip));

    // A second id on the same address shares the verbs context.
    rdma_event_channel *ch2;
    rdma_cm_id *id2;
    ibv_context *ctx2 = bind_device(&ch2, &id2);
    CHECK(ctx2 == ctx);
    unbind_device(ch2, id2);

    // Addresses the device does not own: ENODEV.
    rdma_cm_id *bad = nullptr;
    CHECK(rdma_create_id(ch, &bad, nullptr, RDMA_PS_UDP) == 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.2", &a.sin_addr);
    errno = 0;
    CHECK(rdma_bind_addr(bad, reinterpret_cast<sockaddr *>(&a)) == -1);
    CHECK(errno == ENODEV, "errno %d", errno);
    CHECK(bad->verbs == nullptr);
    sockaddr_in6 a6{};
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    errno = 0;
    CHECK(rdma_bind_addr(bad, reinterpret_cast<sockaddr *>(&a6)) == -1 && errno == ENODEV);
    CHECK(rdma_destroy_id(bad) == 0);
    unbind_device(ch, id);
}

void case_queries()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    // Layout the inline helpers depend on.
    verbs_context *v = verbs_get_ctx(ctx);
    REQUIRE(v);
    CHECK(v->sz == sizeof(verbs_context));
    CHECK(ctx->num_comp_vectors == 4);

    ibv_device_attr d;
    CHECK(ibv_query_device(ctx, &d) == 0);
    CHECK(d.max_qp_wr == 8192);
    CHECK(d.max_cqe == (1 << 20));
    CHECK(d.max_mr_size == (UINT64_C(1) << 32));
    CHECK(d.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING);
    CHECK(d.phys_port_cnt == 1);

    ibv_device_attr_ex dx;
    CHECK(ibv_query_device_ex(ctx, nullptr, &dx) == 0);
    CHECK(dx.orig_attr.max_qp_wr == 8192);
    CHECK(dx.rss_caps.supported_qpts & (1u << IBV_QPT_RAW_PACKET));

    ibv_port_attr p;
    CHECK(ibv_query_port(ctx, 1, &p) == 0);      // inline -> verbs_context::query_port
    CHECK(p.state == IBV_PORT_ACTIVE);
    CHECK(p.link_layer == IBV_LINK_LAYER_ETHERNET);
    CHECK(ibv_query_port(ctx, 2, &p) != 0);
    ibv_port_attr p2;
    memset(&p2, 0, sizeof(p2));
    CHECK((ibv_query_port)(ctx, 1, reinterpret_cast<_compat_ibv_port_attr *>(&p2)) == 0);
    CHECK(p2.state == IBV_PORT_ACTIVE && p2.link_layer == IBV_LINK_LAYER_ETHERNET);

    mlx5dv_context m{};
    m.comp_mask = MLX5DV_CONTEXT_MASK_STRIDING_RQ;
    CHECK(mlx5dv_query_device(ctx, &m) == 0);
    CHECK(m.comp_mask & MLX5DV_CONTEXT_MASK_STRIDING_RQ);
    CHECK(m.flags & MLX5DV_CONTEXT_FLAGS_MPW_ALLOWED);
    CHECK(m.striding_rq_caps.min_single_stride_log_num_of_bytes == 6);
    CHECK(m.striding_rq_caps.max_single_stride_log_num_of_bytes == 13);
    CHECK(m.striding_rq_caps.min_single_wqe_log_num_of_strides == 3);
    CHECK(m.striding_rq_caps.max_single_wqe_log_num_of_strides == 16);
    CHECK(m.striding_rq_caps.supported_qpts == (1u << IBV_QPT_RAW_PACKET));
    // Like libmlx5, caps the caller did not ask for are not reported.
    mlx5dv_context m0{};
    CHECK(mlx5dv_query_device(ctx, &m0) == 0);
    CHECK(!(m0.comp_mask & MLX5DV_CONTEXT_MASK_STRIDING_RQ));

    // Out-of-range comp_vector and sizes are refused.
    errno = 0;
    CHECK(ibv_create_cq(ctx, 16, nullptr, nullptr, 4) == nullptr && errno == EINVAL);
    CHECK(ibv_create_cq(ctx, 0, nullptr, nullptr, 0) == nullptr);
    unbind_device(ch, id);
}

void case_mprq_basic()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 4, 64, 7148, false);
    REQUIRE(built);
    CHECK(s.rwq.wqe_cnt == 4);
    CHECK(s.wqe_size == 512);

    // Frames that arrive before the WQ is ready are dropped.
    stats_map s0 = stats();
    for (int i = 0; i < 3; i++)
        send_frame(make_frame(100, 900 + i));
    CHECK(read_stats_file()["rx_ready"] == 0 && read_stats_file()["flows"] == 1);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    CHECK(s.wq->state == IBV_WQS_RDY);
    s.post_next();
    s.post_next();
    CHECK(spead2_emu_nic_running() == 1);
    // Written synchronously: a test can wait on these before sending.
    CHECK(read_stats_file()["rx_ready"] == 1);
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "not_ready") == 3, "%" PRId64, delta(s1, s0, "not_ready"));
    CHECK(delta(s1, s0, "received") == 3);
    CHECK(poll_ex(s.cq, 1, 50).empty());

    // A (2 strides), B (4 strides): both in WQE 0; C (3 strides) does not fit
    // the 2 left -> filler, C in WQE 1; D (5 strides) exactly fills WQE 1.
    auto A = make_frame(100, 1), B = make_frame(200, 2), C = make_frame(130, 3), D = make_frame(320, 4);
    for (auto *f : {&A, &B, &C, &D})
        send_frame(*f);
    auto c = poll_ex(s.cq, 5);
    REQUIRE(c.size() == 5, "got %zu", c.size());
    for (auto &e : c)
    {
        CHECK(e.status == IBV_WC_SUCCESS);
        CHECK(e.opcode == IBV_WC_RECV);
        CHECK(e.qp_num == s.wq->wq_num);
    }
    CHECK(c[0].wr_id == 0 && c[0].byte_len == (100u | (2u << 16)), "%#x", c[0].byte_len);
    CHECK(c[1].wr_id == 0 && c[1].byte_len == (200u | (4u << 16)), "%#x", c[1].byte_len);
    CHECK(c[2].wr_id == 0 && c[2].byte_len == ((2u << 16) | 0x80000000u), "%#x", c[2].byte_len);
    CHECK(c[3].wr_id == 1 && c[3].byte_len == (130u | (3u << 16)), "%#x", c[3].byte_len);
    CHECK(c[4].wr_id == 1 && c[4].byte_len == (320u | (5u << 16)), "%#x", c[4].byte_len);
    CHECK(frame_at(s.slot_addr(0), A));
    CHECK(frame_at(s.slot_addr(0) + 2 * 64, B));
    CHECK(frame_at(s.slot_addr(1), C));
    CHECK(frame_at(s.slot_addr(1) + 3 * 64, D));
    stats_map s2 = stats();
    CHECK(delta(s2, s1, "delivered") == 4);
    CHECK(delta(s2, s1, "fillers") == 1);
    CHECK(delta(s2, s1, "wqes_completed") == 2);

    // All posted WQEs consumed: no_buffer.
    send_frame(make_frame(100, 5));
    CHECK(wait_received(s2["received"] + 1));
    stats_map s3 = stats();
    CHECK(delta(s3, s2, "no_buffer") == 1);
    CHECK(poll_ex(s.cq, 1, 30).empty());

    // Re-post (ring entries 2 and 3): F fills WQE 2, G starts WQE 3.
    s.post_next();
    s.post_next();
    auto F = make_frame(512, 6), G = make_frame(64, 7);
    send_frame(F);
    send_frame(G);
    c = poll_ex(s.cq, 2);
    REQUIRE(c.size() == 2);
    CHECK(c[0].wr_id == 2 && c[0].byte_len == (512u | (8u << 16)));
    CHECK(c[1].wr_id == 3 && c[1].byte_len == (64u | (1u << 16)));
    CHECK(frame_at(s.slot_addr(2), F));
    CHECK(frame_at(s.slot_addr(3), G));

    // Wrap-around: ring entries 0 and 1 are reused for WQEs 4 and 5.  H needs
    // 8 strides, WQE 3 has 7 left: filler, then H fills WQE 4.
    s.post_next();
    s.post_next();
    auto H = make_frame(500, 8);
    send_frame(H);
    c = poll_ex(s.cq, 2);
    REQUIRE(c.size() == 2);
    CHECK(c[0].wr_id == 3 && c[0].byte_len == ((7u << 16) | 0x80000000u), "%#x", c[0].byte_len);
    CHECK(c[1].wr_id == 4 && c[1].byte_len == (500u | (8u << 16)));
    CHECK(frame_at(s.slot_addr(4), H));

    // Larger than a whole WQE: too_big, nothing consumed.
    stats_map s4 = stats();
    send_frame(make_frame(513, 9));
    auto I = make_frame(60, 10);
    send_frame(I);
    c = poll_ex(s.cq, 1);
    REQUIRE(c.size() == 1);
    CHECK(c[0].wr_id == 5 && c[0].byte_len == (60u | (1u << 16)));
    CHECK(frame_at(s.slot_addr(5), I));
    stats_map s5 = stats();
    CHECK(delta(s5, s4, "too_big") == 1);
    CHECK(delta(s5, s4, "delivered") == 1);
    CHECK(delta(s5, s4, "wqes_completed") == 0);

    // Back to RESET: frames are not_ready again; the consumer index restarts.
    CHECK(s.set_state(IBV_WQS_RESET) == 0);
    send_frame(make_frame(100, 11));
    CHECK(wait_received(s5["received"] + 1));
    CHECK(delta(stats(), s5, "not_ready") == 1);
    s.destroy();
    CHECK(spead2_emu_nic_running() == 0);
    unbind_device(ch, id);
}

/* 70000 WQEs through a 16-entry ring: the 16-bit doorbell counter wraps. */
void case_mprq_doorbell_wrap()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 16, 64, 7148, false);
    REQUIRE(built);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (int i = 0; i < 16; i++)
        s.post_next();
    stats_map s0 = stats();
    const uint32_t n = 70000;
    uint32_t bad = 0;
    std::vector<cqe> c;
    for (uint32_t i = 0; i < n; i++)
    {
        auto f = make_frame(512, i);
        if (spead2_emu_inject(f.data(), f.size()) != 0)
        {
            bad++;
            continue;
        }
        c.clear();
        drain_ex(s.cq, c);
        if (c.size() != 1 || c[0].wr_id != i || c[0].byte_len != (512u | (8u << 16))
            || c[0].status != IBV_WC_SUCCESS || !frame_at(s.slot_addr(i), f))
            bad++;
        s.post_next();
    }
    CHECK(bad == 0, "%u bad completions", bad);
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "delivered") == n);
    CHECK(delta(s1, s0, "wqes_completed") == n);
    s.destroy();
    unbind_device(ch, id);
}

/* Drains the context's asynchronous events; returns their types. */
std::vector<ibv_event_type> async_events(ibv_context *ctx, std::vector<ibv_async_event> *out = nullptr)
{
    std::vector<ibv_event_type> types;
    ibv_async_event ev;
    while (ibv_get_async_event(ctx, &ev) == 0)
    {
        types.push_back(ev.event_type);
        if (out)
            out->push_back(ev);
        ibv_ack_async_event(&ev);
    }
    return types;
}

void case_mprq_errors()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    async_events(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 64, 7148, false);
    REQUIRE(built);
    // A read-only MR, and an MR of another PD.
    std::vector<uint8_t> ro(4096), other(4096);
    ibv_mr *ro_mr = ibv_reg_mr(s.pd, ro.data(), ro.size(), 0);
    ibv_pd *pd2 = ibv_alloc_pd(ctx);
    ibv_mr *other_mr = ibv_reg_mr(pd2, other.data(), other.size(), IBV_ACCESS_LOCAL_WRITE);
    REQUIRE(ro_mr && pd2 && other_mr);
    uint64_t base = reinterpret_cast<uintptr_t>(s.mem);
    struct bad_wqe
    {
        uint64_t addr;
        uint32_t lkey;
        uint32_t bytes;
        ibv_wc_status want;
    };
    const bad_wqe cases[] = {
        {base, s.mr->lkey ^ 0x100, 512, IBV_WC_LOC_PROT_ERR},                          // bad lkey
        {base + s.mem_size - 100, s.mr->lkey, 512, IBV_WC_LOC_PROT_ERR},               // runs off the MR
        {reinterpret_cast<uintptr_t>(ro.data()), ro_mr->lkey, 512, IBV_WC_LOC_PROT_ERR},  // no LOCAL_WRITE
        {reinterpret_cast<uintptr_t>(other.data()), other_mr->lkey, 512, IBV_WC_LOC_PROT_ERR},  // other PD
        {base, s.mr->lkey, 64, IBV_WC_LOC_LEN_ERR},                                    // byte_count too small
    };
    for (const auto &b : cases)
    {
        // Start afresh each time: RESET, then RDY, then post.
        CHECK(s.set_state(IBV_WQS_RESET) == 0);
        CHECK(s.set_state(IBV_WQS_RDY) == 0);
        s.head = 0;
        s.post(b.addr, b.lkey, b.bytes);
        s.post(base + 512, s.mr->lkey, 512);
        stats_map s0 = stats();
        send_frame(make_frame(512, 100));
        auto c = poll_ex(s.cq, 1);
        REQUIRE(c.size() == 1);
        CHECK(c[0].status == b.want, "status %d", int(c[0].status));
        CHECK(c[0].wr_id == 0);
        // byte_len of an error CQE is reserved: junk, not the frame's strides.
        CHECK(c[0].byte_len != (512u | (8u << 16)), "byte_len 0x%x", c[0].byte_len);
        CHECK(delta(stats(), s0, "errors") == 1);
        if (b.want != IBV_WC_LOC_LEN_ERR)
        {
            // The WQ is now in the error state: nothing more arrives.
            CHECK(s.wq->state == IBV_WQS_ERR);
            stats_map s1 = stats();
            send_frame(make_frame(512, 101));
            CHECK(wait_received(s1["received"] + 1));
            CHECK(delta(stats(), s1, "not_ready") == 1);
            CHECK(poll_ex(s.cq, 1, 50).empty());
            CHECK(s.set_state(IBV_WQS_RDY) == EINVAL, "ERR -> RDY needs RESET first");
        }
        else
            CHECK(s.wq->state == IBV_WQS_RDY);
    }
    // After RESET -> RDY and re-posting, the queue works again.
    CHECK(s.set_state(IBV_WQS_RESET) == 0);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    s.head = 0;
    s.post(base + 512, s.mr->lkey, 512);
    auto ok = make_frame(512, 200);
    send_frame(ok);
    auto c = poll_ex(s.cq, 1);
    REQUIRE(c.size() == 1);
    CHECK(c[0].status == IBV_WC_SUCCESS && c[0].byte_len == (512u | (8u << 16)));
    CHECK(frame_at(base + 512, ok));
    bool untouched = true;
    for (uint8_t b : ro)
        untouched &= b == 0;
    for (uint8_t b : other)
        untouched &= b == 0;
    CHECK(untouched);
    for (size_t i = 0; i < 512; i++)
        untouched &= s.mem[i] == 0;
    CHECK(untouched, "nothing may be written on error");
    CHECK(async_events(ctx).empty(), "error CQEs raise no async event");
    CHECK(ibv_dereg_mr(ro_mr) == 0);
    CHECK(ibv_dereg_mr(other_mr) == 0);
    CHECK(ibv_dealloc_pd(pd2) == 0);
    s.destroy();
    unbind_device(ch, id);
}

/* Plain QP helper. */
struct plain_stack
{
    ibv_pd *pd = nullptr;
    ibv_comp_channel *channel = nullptr;
    ibv_cq *cq = nullptr;
    ibv_qp *qp = nullptr;
    ibv_mr *mr = nullptr;
    std::vector<uint8_t> mem;
    int tag = 0;

    bool own_channel = true;

    bool build(ibv_context *ctx, uint32_t max_recv_wr, uint32_t max_recv_sge, int cqe,
               bool use_ex = false, ibv_comp_channel *ext_channel = nullptr)
    {
        pd = ibv_alloc_pd(ctx);
        own_channel = !ext_channel;
        channel = ext_channel ? ext_channel : ibv_create_comp_channel(ctx);
        CHECK(pd && channel);
        cq = ibv_create_cq(ctx, cqe, &tag, channel, 3);
        CHECK(cq, "ibv_create_cq: %s", strerror(errno));
        if (!cq)
            return false;
        if (use_ex)
        {
            ibv_qp_init_attr_ex a{};
            a.send_cq = cq;
            a.recv_cq = cq;
            a.qp_type = IBV_QPT_RAW_PACKET;
            a.cap.max_send_wr = 1;
            a.cap.max_recv_wr = max_recv_wr;
            a.cap.max_recv_sge = max_recv_sge;
            a.comp_mask = IBV_QP_INIT_ATTR_PD;    // inline forwards to ibv_create_qp
            a.pd = pd;
            qp = ibv_create_qp_ex(ctx, &a);
        }
        else
        {
            ibv_qp_init_attr a{};
            a.send_cq = cq;
            a.recv_cq = cq;
            a.qp_type = IBV_QPT_RAW_PACKET;
            a.cap.max_send_wr = 1;
            a.cap.max_recv_wr = max_recv_wr;
            a.cap.max_recv_sge = max_recv_sge;
            qp = ibv_create_qp(pd, &a);
        }
        CHECK(qp, "create qp: %s", strerror(errno));
        mem.assign(65536, 0);
        mr = ibv_reg_mr(pd, mem.data(), mem.size(), IBV_ACCESS_LOCAL_WRITE);
        CHECK(mr);
        return qp && mr;
    }

    int modify(ibv_qp_state st, bool port = true)
    {
        ibv_qp_attr a{};
        a.qp_state = st;
        a.port_num = 1;
        return ibv_modify_qp(qp, &a, IBV_QP_STATE | (port ? IBV_QP_PORT : 0));
    }

    int post(uint64_t wr_id, std::initializer_list<std::pair<size_t, uint32_t>> sges,
             uint32_t lkey_xor = 0)
    {
        ibv_sge sg[4];
        int n = 0;
        for (auto &p : sges)
        {
            sg[n].addr = reinterpret_cast<uintptr_t>(mem.data()) + p.first;
            sg[n].length = p.second;
            sg[n].lkey = mr->lkey ^ lkey_xor;
            n++;
        }
        ibv_recv_wr wr{};
        wr.wr_id = wr_id;
        wr.sg_list = sg;
        wr.num_sge = n;
        ibv_recv_wr *bad = nullptr;
        return ibv_post_recv(qp, &wr, &bad);
    }

    void destroy()
    {
        if (qp)
            CHECK(ibv_destroy_qp(qp) == 0);
        if (cq)
            CHECK(ibv_destroy_cq(cq) == 0);
        if (channel && own_channel)
            CHECK(ibv_destroy_comp_channel(channel) == 0);
        if (mr)
            CHECK(ibv_dereg_mr(mr) == 0);
        if (pd)
            CHECK(ibv_dealloc_pd(pd) == 0);
        *this = plain_stack();
    }
};

void case_plain_qp()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    plain_stack p;
    bool built = p.build(ctx, 8, 2, 32);
    REQUIRE(built);
    CHECK(p.qp->qp_type == IBV_QPT_RAW_PACKET && p.qp->state == IBV_QPS_RESET);
    // Illegal transitions.
    CHECK(p.modify(IBV_QPS_RTR) == EINVAL);
    CHECK(p.modify(IBV_QPS_INIT, false) == EINVAL);   // raw packet INIT needs the port
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    ibv_flow *flow = create_flow(p.qp, our_mac, our_ip, 7160);
    REQUIRE(flow);
    CHECK(p.post(100, {{0, 256}}) == 0);
    CHECK(p.post(101, {{1024, 256}}) == 0);
    CHECK(p.post(102, {{2048, 200}, {4096, 200}}) == 0);
    CHECK(p.post(103, {{8192, 256}}, 0x100) == 0);     // bad lkey

    stats_map s0 = stats();
    send_frame(make_frame(100, 1, 7160));
    send_frame(make_frame(100, 2, 7160));
    CHECK(p.modify(IBV_QPS_RTR) == 0);
    CHECK(p.qp->state == IBV_QPS_RTR);
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "not_ready") == 2);

    auto f1 = make_frame(100, 3, 7160), f2 = make_frame(300, 4, 7160), f3 = make_frame(300, 5, 7160),
         f4 = make_frame(80, 6, 7160);
    for (auto *f : {&f1, &f2, &f3, &f4})
        send_frame(*f);
    auto wc = poll_plain(p.cq, 4);
    REQUIRE(wc.size() == 4, "got %zu", wc.size());
    CHECK(wc[0].wr_id == 100 && wc[0].status == IBV_WC_SUCCESS && wc[0].byte_len == 100);
    CHECK(wc[0].opcode == IBV_WC_RECV && wc[0].qp_num == p.qp->qp_num);
    CHECK(memcmp(p.mem.data(), f1.data(), f1.size()) == 0);
    CHECK(wc[1].wr_id == 101 && wc[1].status == IBV_WC_LOC_LEN_ERR, "status %d", int(wc[1].status));
    CHECK(wc[2].wr_id == 102 && wc[2].status == IBV_WC_SUCCESS && wc[2].byte_len == 300);
    CHECK(memcmp(p.mem.data() + 2048, f3.data(), 200) == 0);
    CHECK(memcmp(p.mem.data() + 4096, f3.data() + 200, 100) == 0);
    CHECK(wc[3].wr_id == 103 && wc[3].status == IBV_WC_LOC_PROT_ERR);
    CHECK(wc[3].byte_len != 80, "byte_len of an error completion is junk");
    CHECK(p.mem[8192] == 0);
    // A protection error (unlike a length error) leaves the QP in ERR.
    CHECK(p.qp->state == IBV_QPS_ERR);
    CHECK(p.post(104, {{0, 256}}) == EINVAL);
    CHECK(p.modify(IBV_QPS_RTR) == EINVAL);
    CHECK(p.modify(IBV_QPS_RESET, false) == 0);
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    CHECK(p.modify(IBV_QPS_RTR) == 0);

    // No WR posted: no_buffer.
    stats_map s2 = stats();
    send_frame(make_frame(100, 7, 7160));
    CHECK(wait_received(s2["received"] + 1));
    CHECK(delta(stats(), s2, "no_buffer") == 1);

    // Queue capacity (8) is enforced by post_recv.
    int rc = 0;
    for (int i = 0; i < 9 && rc == 0; i++)
        rc = p.post(200 + i, {{size_t(i) * 1024, 1024}});
    CHECK(rc == ENOMEM);
    ibv_recv_wr wr{};
    ibv_sge sg[3] = {};
    wr.sg_list = sg;
    wr.num_sge = 3;    // more than max_recv_sge
    ibv_recv_wr *bad = nullptr;
    CHECK(ibv_post_recv(p.qp, &wr, &bad) == EINVAL && bad == &wr);

    // Moving to ERR flushes the 8 outstanding WRs.
    CHECK(p.modify(IBV_QPS_ERR, false) == 0);
    wc = poll_plain(p.cq, 8);
    CHECK(wc.size() == 8);
    for (auto &w : wc)
        CHECK(w.status == IBV_WC_WR_FLUSH_ERR);
    CHECK(ibv_destroy_flow(flow) == 0);
    p.destroy();

    // ibv_create_qp_ex with only IBV_QP_INIT_ATTR_PD goes through ibv_create_qp.
    plain_stack q;
    built = q.build(ctx, 4, 1, 8, true);
    CHECK(built);
    q.destroy();
    CHECK(spead2_emu_nic_running() == 0);
    unbind_device(ch, id);
}

void case_flow_filter()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 64, 7148, false);
    REQUIRE(built);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (int i = 0; i < 8; i++)
        s.post_next();
    stats_map s0 = stats();
    send_frame(make_frame(100, 1, 7149));                       // other port
    send_frame(make_frame(100, 2, 7148, other_ip));             // other IP
    send_frame(make_frame(100, 3, 7148, our_ip, other_mac));    // other MAC
    send_frame(make_frame(100, 4, 7148, our_ip, our_mac, 0x0806));  // not IPv4
    send_frame(std::vector<uint8_t>(10, 0xab));                 // runt
    auto good = make_frame(100, 5);
    send_frame(good);
    auto c = poll_ex(s.cq, 1);
    REQUIRE(c.size() == 1);
    CHECK(frame_at(s.slot_addr(0), good));
    CHECK(wait_received(s0["received"] + 6));
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "no_flow") == 5, "%" PRId64, delta(s1, s0, "no_flow"));
    CHECK(delta(s1, s0, "delivered") == 1);

    // A plain QP takes UDP port 7149 to any IP; the MPRQ QP also gets a
    // low-precedence catch-all for our MAC.
    plain_stack p;
    built = p.build(ctx, 4, 1, 8);
    REQUIRE(built);
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    ibv_flow *f2 = create_flow(p.qp, nullptr, 0, 7149);
    ibv_flow *f3 = create_flow(s.qp, our_mac, 0, -1, 5);
    REQUIRE(f2 && f3);
    CHECK(p.post(1, {{0, 2048}}) == 0);
    CHECK(p.modify(IBV_QPS_RTR) == 0);
    auto to_plain = make_frame(100, 6, 7149, other_ip);
    auto to_catchall = make_frame(100, 7, 7150);
    send_frame(to_plain);
    send_frame(to_catchall);
    auto wc = poll_plain(p.cq, 1);
    REQUIRE(wc.size() == 1);
    CHECK(wc[0].status == IBV_WC_SUCCESS && memcmp(p.mem.data(), to_plain.data(), to_plain.size()) == 0);
    c = poll_ex(s.cq, 1);
    REQUIRE(c.size() == 1);
    CHECK(c[0].byte_len == (100u | (2u << 16)));
    CHECK(frame_at(s.slot_addr(0) + 2 * 64, to_catchall));

    // Flows gone: no_flow again.
    CHECK(ibv_destroy_flow(f2) == 0);
    CHECK(ibv_destroy_flow(f3) == 0);
    stats_map s2 = stats();
    send_frame(make_frame(100, 8, 7149));
    send_frame(make_frame(100, 9, 7150));
    CHECK(wait_received(s2["received"] + 2));
    CHECK(delta(stats(), s2, "no_flow") == 2);

    // Malformed / unsupported rules.
    flow_rule r{};
    r.attr.type = IBV_FLOW_ATTR_NORMAL;
    r.attr.port = 1;
    r.attr.num_of_specs = 1;
    r.attr.size = sizeof(ibv_flow_attr) + sizeof(ibv_flow_spec_eth);
    r.eth.type = IBV_FLOW_SPEC_ETH;
    r.eth.size = 7;
    errno = 0;
    CHECK(ibv_create_flow(s.qp, &r.attr) == nullptr && errno == EINVAL);
    r.eth.size = sizeof(ibv_flow_spec_eth);
    r.attr.port = 2;
    CHECK(ibv_create_flow(s.qp, &r.attr) == nullptr);
    p.destroy();
    s.destroy();
    unbind_device(ch, id);
}

void case_comp_channel()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 64, 7148, true);
    REQUIRE(built);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (int i = 0; i < 8; i++)
        s.post_next();
    int fd = s.channel->fd;
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    ibv_cq *cq = ibv_cq_ex_to_cq(s.cq);
    ibv_cq *ev_cq = nullptr;
    void *ev_ctx = nullptr;

    // Not armed: completions but no event.
    send_frame(make_frame(100, 1));
    CHECK(poll_ex(s.cq, 1).size() == 1);
    errno = 0;
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == -1 && errno == EAGAIN);

    // Armed: exactly one event for several completions.
    CHECK(ibv_req_notify_cq(cq, 0) == 0);
    send_frame(make_frame(100, 2));
    send_frame(make_frame(100, 3));
    pollfd pfd{fd, POLLIN, 0};
    CHECK(poll(&pfd, 1, 3000) == 1);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == 0);
    CHECK(ev_cq == cq && ev_ctx == &s.cq_context_tag);
    ibv_ack_cq_events(ev_cq, 1);
    CHECK(poll_ex(s.cq, 2).size() == 2);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == -1 && errno == EAGAIN);
    CHECK(cq->comp_events_completed == 1);

    // A plain CQ on the same channel: the event names the CQ that completed.
    plain_stack p;
    built = p.build(ctx, 4, 1, 8, false, s.channel);
    REQUIRE(built);
    CHECK(ibv_destroy_comp_channel(s.channel) == EBUSY);   // two CQs use it
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    ibv_flow *f = create_flow(p.qp, our_mac, our_ip, 7161);
    REQUIRE(f);
    CHECK(p.post(1, {{0, 2048}}) == 0);
    CHECK(p.post(2, {{2048, 2048}}) == 0);
    CHECK(p.modify(IBV_QPS_RTR) == 0);
    CHECK(p.modify(IBV_QPS_RTS, false) == 0);
    CHECK(ibv_req_notify_cq(cq, 0) == 0);
    CHECK(ibv_req_notify_cq(p.cq, 0) == 0);
    send_frame(make_frame(100, 4, 7161));
    CHECK(poll(&pfd, 1, 3000) == 1);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == 0);
    CHECK(ev_cq == p.cq && ev_ctx == &p.tag);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == -1 && errno == EAGAIN);
    ibv_ack_cq_events(p.cq, 1);
    CHECK(poll_plain(p.cq, 1).size() == 1);
    // The MPRQ CQ is still armed.
    send_frame(make_frame(100, 5));
    CHECK(poll(&pfd, 1, 3000) == 1);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == 0);
    CHECK(ev_cq == cq);
    ibv_ack_cq_events(ev_cq, 1);
    CHECK(poll_ex(s.cq, 1).size() == 1);
    // An event still pending when its CQ is destroyed disappears with it.
    CHECK(ibv_req_notify_cq(p.cq, 0) == 0);
    send_frame(make_frame(100, 6, 7161));
    CHECK(poll(&pfd, 1, 3000) == 1);
    CHECK(poll_plain(p.cq, 1).size() == 1);
    CHECK(ibv_destroy_flow(f) == 0);
    p.destroy();
    CHECK(poll(&pfd, 1, 0) == 0);
    CHECK(ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx) == -1 && errno == EAGAIN);
    s.destroy();
    unbind_device(ch, id);
}

void case_cq_overflow()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    async_events(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 4, 7148, false);
    REQUIRE(built);
    CHECK(s.cq->cqe == 4);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (int i = 0; i < 8; i++)
        s.post_next();
    stats_map s0 = stats();
    std::vector<std::vector<uint8_t>> fr;
    for (int i = 0; i < 6; i++)
    {
        fr.push_back(make_frame(60, 10 + i));
        send_frame(fr.back());
    }
    CHECK(wait_received(s0["received"] + 6));
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "delivered") == 4);
    // The 5th overruns the CQ; the WQ is then in ERR, so the 6th is not_ready.
    CHECK(delta(s1, s0, "cq_overflow") == 1);
    CHECK(delta(s1, s0, "not_ready") == 1);
    // An overrun is a fatal CQ error, as on mlx5: IBV_EVENT_CQ_ERR, and the
    // queue that needed the CQ is in the error state.
    std::vector<ibv_async_event> evs;
    auto types = async_events(ctx, &evs);
    REQUIRE(types.size() == 1, "got %zu async events", types.size());
    CHECK(types[0] == IBV_EVENT_CQ_ERR);
    CHECK(evs[0].element.cq == ibv_cq_ex_to_cq(s.cq));
    CHECK(s.wq->state == IBV_WQS_ERR);
    auto c = poll_ex(s.cq, 4);
    REQUIRE(c.size() == 4);
    for (int i = 0; i < 4; i++)
        CHECK(frame_at(s.slot_addr(0) + uint64_t(i) * 64, fr[i]));
    // The CQ stays broken even after the WQ is reset: nothing more completes.
    CHECK(s.set_state(IBV_WQS_RESET) == 0);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    s.head = 0;
    s.post_next();
    stats_map s2 = stats();
    send_frame(make_frame(60, 99));
    CHECK(wait_received(s2["received"] + 1));
    CHECK(delta(stats(), s2, "delivered") == 0);
    CHECK(poll_ex(s.cq, 1, 50).empty());
    s.destroy();
    unbind_device(ch, id);
}

void case_teardown_order()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 64, 7148, true);
    REQUIRE(built);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    s.post_next();
    CHECK(spead2_emu_nic_running() == 1);
    // Everything still referenced: EBUSY, nothing breaks.
    CHECK(ibv_destroy_cq(ibv_cq_ex_to_cq(s.cq)) == EBUSY);
    CHECK(ibv_destroy_wq(s.wq) == EBUSY);
    CHECK(ibv_destroy_rwq_ind_table(s.ind) == EBUSY);
    CHECK(ibv_destroy_qp(s.qp) == EBUSY);
    CHECK(ibv_dealloc_pd(s.pd) == EBUSY);
    CHECK(ibv_destroy_comp_channel(s.channel) == EBUSY);
    // The id goes away first; the shared context stays usable.
    unbind_device(ch, id);
    send_frame(make_frame(100, 1));
    CHECK(poll_ex(s.cq, 1).size() == 1);
    // MR deregistered while its WQE is in use: protection error, no write.
    CHECK(ibv_dereg_mr(s.mr) == 0);
    s.mr = nullptr;
    send_frame(make_frame(100, 2));
    auto c = poll_ex(s.cq, 1);
    CHECK(c.size() == 1 && c[0].status == IBV_WC_LOC_PROT_ERR);
    s.destroy();
    CHECK(spead2_emu_nic_running() == 0);

    // A context closed while objects live is freed with its last object.
    int n;
    ibv_device **list = ibv_get_device_list(&n);
    REQUIRE(list);
    ibv_context *c2 = ibv_open_device(list[0]);
    ibv_free_device_list(list);
    REQUIRE(c2);
    ibv_pd *pd = ibv_alloc_pd(c2);
    ibv_cq *cq = ibv_create_cq(c2, 4, nullptr, nullptr, 0);
    REQUIRE(pd && cq);
    CHECK(ibv_close_device(c2) == 0);
    CHECK(ibv_poll_cq(cq, 1, nullptr) == 0);
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
}

/* Like libmlx5, RESET -> RDY restarts the doorbell record at 0: WQEs posted
 * while the WQ is not ready are lost, and the application must post after
 * RDY (as the production code does). */
void case_mprq_post_before_rdy()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 4, 64, 7148, false);
    REQUIRE(built);
    for (int round = 0; round < 2; round++)
    {
        // Posted in RESET (the first time straight after creation, then after
        // an error-style reset): the NIC never sees them.
        s.post_next();
        s.post_next();
        CHECK(be32toh(s.rwq.dbrec[MLX5_RCV_DBR]) != 0);
        CHECK(s.set_state(IBV_WQS_RDY) == 0);
        CHECK(be32toh(s.rwq.dbrec[MLX5_RCV_DBR]) == 0, "doorbell record not zeroed on RESET -> RDY");
        stats_map s0 = stats();
        send_frame(make_frame(100, 1 + 10 * round));
        CHECK(wait_received(s0["received"] + 1));
        CHECK(delta(stats(), s0, "no_buffer") == 1, "round %d", round);
        CHECK(poll_ex(s.cq, 1, 30).empty());
        // Posted once ready: received, counting WQEs from 0 again.
        s.post_next();
        auto A = make_frame(100, 2 + 10 * round);
        send_frame(A);
        auto c = poll_ex(s.cq, 1);
        REQUIRE(c.size() == 1);
        CHECK(c[0].status == IBV_WC_SUCCESS && c[0].wr_id == 0 && frame_at(s.slot_addr(0), A));
        CHECK(s.set_state(IBV_WQS_RESET) == 0);
    }
    s.destroy();
    unbind_device(ch, id);
}

/* Like libibverbs, ibv_destroy_cq blocks until every completion event the
 * application took with ibv_get_cq_event is acknowledged. */
void case_destroy_cq_waits_for_events()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, 8, 64, 7148, true);
    REQUIRE(built);
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (int i = 0; i < 8; i++)
        s.post_next();
    ibv_cq *cq = ibv_cq_ex_to_cq(s.cq);
    CHECK(ibv_req_notify_cq(cq, 0) == 0);
    send_frame(make_frame(100, 1));
    pollfd pfd{s.channel->fd, POLLIN, 0};
    CHECK(poll(&pfd, 1, 5000) == 1);
    ibv_cq *ev_cq = nullptr;
    void *ev_ctx = nullptr;
    const int got = ibv_get_cq_event(s.channel, &ev_cq, &ev_ctx);   // REQUIRE evaluates twice
    REQUIRE(got == 0);
    CHECK(ev_cq == cq);
    // Everything but the CQ goes; the event is still unacknowledged.
    CHECK(ibv_destroy_flow(s.flow) == 0);
    CHECK(ibv_destroy_qp(s.qp) == 0);
    CHECK(ibv_destroy_rwq_ind_table(s.ind) == 0);
    CHECK(ibv_destroy_wq(s.wq) == 0);
    s.flow = nullptr;
    s.qp = nullptr;
    s.ind = nullptr;
    s.wq = nullptr;
    std::atomic<bool> acked{false}, returned{false}, saw_ack{false};
    std::atomic<int> rc{-1};
    std::thread t([&] {
        rc = ibv_destroy_cq(cq);
        saw_ack = acked.load();
        returned = true;
    });
    // It cannot return before the acknowledgement, however long we wait.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(!returned.load(), "ibv_destroy_cq returned with an event unacknowledged");
    acked = true;
    ibv_ack_cq_events(cq, 1);
    t.join();
    CHECK(rc == 0 && saw_ack.load());
    s.cq = nullptr;
    s.destroy();
    unbind_device(ch, id);
}

/* Steering shared by several readers, as on ConnectX-5: identical rules
 * (two readers of the same group) each get every frame; an overlapping,
 * less specific rule at the same priority takes the frames from them. */
void case_flow_sharing()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack a, b, w;
    bool built = a.build(ctx, 8, 64, 7148, false) && b.build(ctx, 8, 64, 7148, false)
        && w.build(ctx, 8, 64, -1, false);
    REQUIRE(built);
    for (mprq_stack *x : {&a, &b, &w})
    {
        CHECK(x->set_state(IBV_WQS_RDY) == 0);
        for (int i = 0; i < 8; i++)
            x->post_next();
    }
    stats_map s0 = stats();
    auto F = make_frame(100, 1);
    send_frame(F);
    auto ca = poll_ex(a.cq, 1), cb = poll_ex(b.cq, 1);
    REQUIRE(ca.size() == 1 && cb.size() == 1, "identical rules: %zu and %zu completions", ca.size(), cb.size());
    CHECK(frame_at(a.slot_addr(0), F) && frame_at(b.slot_addr(0), F));
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "received") == 1 && delta(s1, s0, "delivered") == 2, "received %" PRId64 ", delivered %" PRId64,
          delta(s1, s0, "received"), delta(s1, s0, "delivered"));

    // A wildcard for the port (any address) at the same priority: it takes
    // the traffic, and the two exact readers starve.
    w.flow = create_flow(w.qp, nullptr, 0, 7148);
    REQUIRE(w.flow);
    auto G = make_frame(100, 2);
    send_frame(G);
    auto cw = poll_ex(w.cq, 1);
    REQUIRE(cw.size() == 1);
    CHECK(frame_at(w.slot_addr(0), G));
    CHECK(poll_ex(a.cq, 1, 50).empty() && poll_ex(b.cq, 1, 50).empty());
    // Frames for another address on that port go to the wildcard as well.
    send_frame(make_frame(100, 3, 7148, other_ip));
    CHECK(poll_ex(w.cq, 1).size() == 1);

    // At a lower precedence (higher value) the wildcard no longer interferes.
    CHECK(ibv_destroy_flow(w.flow) == 0);
    w.flow = create_flow(w.qp, nullptr, 0, 7148, 1);
    REQUIRE(w.flow);
    auto H = make_frame(100, 4);
    send_frame(H);
    CHECK(poll_ex(a.cq, 1).size() == 1 && poll_ex(b.cq, 1).size() == 1);
    CHECK(poll_ex(w.cq, 1, 50).empty());
    a.destroy();
    b.destroy();
    w.destroy();
    unbind_device(ch, id);
}

void case_stats_file()
{
    // No queue alive: the NIC thread has stopped and written the file.
    CHECK(spead2_emu_nic_running() == 0);
    FILE *f = fopen(g_stats_path.c_str(), "r");
    REQUIRE(f, "%s: %s", g_stats_path.c_str(), strerror(errno));
    char buf[8192] = "";
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    stats_map file = parse_stats(buf);
    stats_map now = stats();
    CHECK(file == now, "file %s", buf);
    for (const char *k : {"delivered", "no_flow", "no_buffer", "too_big", "not_ready",
                          "cq_overflow", "fillers", "wqes_completed"})
        CHECK(file.count(k), "missing %s", k);
    CHECK(now["rx_ready"] == 0 && now["flows"] == 0);
    CHECK(now["delivered"] > 0 && now["no_flow"] > 0 && now["no_buffer"] > 0 && now["too_big"] > 0
          && now["not_ready"] > 0 && now["cq_overflow"] > 0 && now["fillers"] > 0);
}

/* The production code resolves these with dlsym() from the override
 * library; all must be exported under their plain (unversioned) names. */
void case_exports()
{
    Dl_info info{};
    REQUIRE(dladdr(reinterpret_cast<void *>(&spead2_emu_stats), &info) && info.dli_fname);
    void *h = dlopen(info.dli_fname, RTLD_NOW | RTLD_LOCAL);
    REQUIRE(h, "%s", dlerror());
    for (const char *name : {
             "ibv_get_device_list", "ibv_free_device_list", "ibv_get_device_name",
             "ibv_open_device", "ibv_close_device", "ibv_query_device", "ibv_query_port",
             "ibv_alloc_pd", "ibv_dealloc_pd", "ibv_reg_mr", "ibv_reg_mr_iova2", "ibv_dereg_mr",
             "ibv_create_comp_channel", "ibv_destroy_comp_channel", "ibv_create_cq",
             "ibv_destroy_cq", "ibv_get_cq_event", "ibv_ack_cq_events", "ibv_create_qp",
             "ibv_destroy_qp", "ibv_modify_qp",
             "rdma_create_event_channel", "rdma_destroy_event_channel", "rdma_create_id",
             "rdma_bind_addr", "rdma_destroy_id",
             "mlx5dv_is_supported", "mlx5dv_query_device", "mlx5dv_create_wq", "mlx5dv_init_obj",
             "spead2_emu_stats", "spead2_emu_inject", "spead2_emu_nic_running"})
        CHECK(dlsym(h, name) != nullptr, "%s", name);
    // Nothing but the API leaks out: a C++ runtime symbol resolves to
    // libstdc++ (a dependency searched by dlsym), never to the emulator.
    void *cxx = dlsym(h, "_ZNSt6thread6_StateD2Ev");
    Dl_info cinfo{};
    CHECK(!cxx || (dladdr(cxx, &cinfo) && strcmp(cinfo.dli_fname, info.dli_fname) != 0));
    // The pointers are the functions the test linked against.
    CHECK(dlsym(h, "ibv_open_device") == reinterpret_cast<void *>(&ibv_open_device));
    dlclose(h);
}

/* ------------------------------------------------------------------------ */
/* Cases run in a child with their own environment                         */

void child_no_mprq()
{
    int n;
    ibv_device **list = ibv_get_device_list(&n);
    REQUIRE(list && n == 1);
    CHECK(!mlx5dv_is_supported(list[0]));
    ibv_free_device_list(list);
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    ibv_pd *pd = ibv_alloc_pd(ctx);
    ibv_cq *cq = ibv_create_cq(ctx, 8, nullptr, nullptr, 0);
    ibv_wq_init_attr wattr{};
    wattr.wq_type = IBV_WQT_RQ;
    wattr.max_wr = 4;
    wattr.max_sge = 1;
    wattr.pd = pd;
    wattr.cq = cq;
    mlx5dv_wq_init_attr mattr{};
    mattr.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
    mattr.striding_rq_attrs.single_stride_log_num_of_bytes = 6;
    mattr.striding_rq_attrs.single_wqe_log_num_of_strides = 3;
    errno = 0;
    CHECK(mlx5dv_create_wq(ctx, &wattr, &mattr) == nullptr && errno == EOPNOTSUPP);
    // The plain reader path still works.
    plain_stack p;
    bool built = p.build(ctx, 4, 1, 8);
    CHECK(built);
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    ibv_flow *f = create_flow(p.qp, our_mac, our_ip, 7148);
    CHECK(f);
    if (f)
        CHECK(ibv_destroy_flow(f) == 0);
    p.destroy();
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    unbind_device(ch, id);
}

void child_no_flow()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    ibv_device_attr d;
    CHECK(ibv_query_device(ctx, &d) == 0);
    CHECK(!(d.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING));
    plain_stack p;
    bool built = p.build(ctx, 4, 1, 8);
    REQUIRE(built);
    CHECK(p.modify(IBV_QPS_INIT) == 0);
    errno = 0;
    CHECK(create_flow(p.qp, our_mac, our_ip, 7148) == nullptr);
    CHECK(errno == EOPNOTSUPP, "errno %d", errno);
    p.destroy();
    unbind_device(ch, id);
}

/* Without CAP_IPC_LOCK, MRs and queue buffers are charged against
 * RLIMIT_MEMLOCK and fail with ENOMEM beyond it, as with the kernel. */
void child_memlock()
{
    rlimit lim{64 * 1024, 64 * 1024};
    REQUIRE(setrlimit(RLIMIT_MEMLOCK, &lim) == 0);
    __user_cap_header_struct header{};
    __user_cap_data_struct data[2]{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    REQUIRE(syscall(SYS_capget, &header, data) == 0);
    data[0].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    data[0].permitted &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    REQUIRE(syscall(SYS_capset, &header, data) == 0);
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    ibv_pd *pd = ibv_alloc_pd(ctx);
    REQUIRE(pd);
    std::vector<uint8_t> big(1 << 20), small(16 * 1024);
    errno = 0;
    CHECK(ibv_reg_mr(pd, big.data(), big.size(), IBV_ACCESS_LOCAL_WRITE) == nullptr && errno == ENOMEM,
          "errno %d", errno);
    ibv_mr *mr = ibv_reg_mr(pd, small.data(), small.size(), IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr);
    // 1024 CQEs of 64 bytes = 64 KiB: over the limit with the MR's 16 KiB.
    errno = 0;
    CHECK(ibv_create_cq(ctx, 1024, nullptr, nullptr, 0) == nullptr && errno == ENOMEM, "errno %d", errno);
    CHECK(ibv_dereg_mr(mr) == 0);
    // Deregistering gave the charge back.
    ibv_cq *cq = ibv_create_cq(ctx, 1024, nullptr, nullptr, 0);
    CHECK(cq);
    if (cq)
        CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    unbind_device(ch, id);
}

void child_no_raw()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    ibv_pd *pd = ibv_alloc_pd(ctx);
    ibv_cq *cq = ibv_create_cq(ctx, 8, nullptr, nullptr, 0);
    ibv_qp_init_attr a{};
    a.send_cq = cq;
    a.recv_cq = cq;
    a.qp_type = IBV_QPT_RAW_PACKET;
    a.cap.max_recv_wr = 4;
    a.cap.max_recv_sge = 1;
    errno = 0;
    CHECK(ibv_create_qp(pd, &a) == nullptr && errno == EPERM, "errno %d", errno);
    // The RSS QP is refused the same way.
    ibv_wq_init_attr wattr{};
    wattr.wq_type = IBV_WQT_RQ;
    wattr.max_wr = 4;
    wattr.max_sge = 1;
    wattr.pd = pd;
    wattr.cq = cq;
    mlx5dv_wq_init_attr mattr{};
    mattr.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
    mattr.striding_rq_attrs.single_stride_log_num_of_bytes = 6;
    mattr.striding_rq_attrs.single_wqe_log_num_of_strides = 3;
    ibv_wq *wq = mlx5dv_create_wq(ctx, &wattr, &mattr);
    REQUIRE(wq);
    ibv_wq *wqs[1] = {wq};
    ibv_rwq_ind_table_init_attr iattr{};
    iattr.ind_tbl = wqs;
    ibv_rwq_ind_table *ind = ibv_create_rwq_ind_table(ctx, &iattr);
    REQUIRE(ind);
    uint8_t key[40] = {};
    ibv_qp_init_attr_ex q{};
    q.qp_type = IBV_QPT_RAW_PACKET;
    q.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH;
    q.pd = pd;
    q.rwq_ind_tbl = ind;
    q.rx_hash_conf.rx_hash_function = IBV_RX_HASH_FUNC_TOEPLITZ;
    q.rx_hash_conf.rx_hash_key_len = sizeof(key);
    q.rx_hash_conf.rx_hash_key = key;
    errno = 0;
    CHECK(ibv_create_qp_ex(ctx, &q) == nullptr && errno == EPERM);
    CHECK(ibv_destroy_rwq_ind_table(ind) == 0);
    CHECK(ibv_destroy_wq(wq) == 0);
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    unbind_device(ch, id);
}

void child_limits()
{
    // SPEAD2_EMU_INTERFACE=127.0.0.5: 127.0.0.1 is not ours any more.
    rdma_event_channel *ech = rdma_create_event_channel();
    rdma_cm_id *bad;
    CHECK(rdma_create_id(ech, &bad, nullptr, RDMA_PS_UDP) == 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(our_ip);
    errno = 0;
    CHECK(rdma_bind_addr(bad, reinterpret_cast<sockaddr *>(&a)) == -1 && errno == ENODEV);
    rdma_destroy_id(bad);
    rdma_destroy_event_channel(ech);
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id, "127.0.0.5");
    REQUIRE(ctx);
    ibv_device_attr d;
    CHECK(ibv_query_device(ctx, &d) == 0);
    CHECK(d.max_qp_wr == 64 && d.max_cqe == 128 && d.max_mr_size == 4096);
    ibv_pd *pd = ibv_alloc_pd(ctx);
    std::vector<uint8_t> mem(8192);
    CHECK(ibv_reg_mr(pd, mem.data(), 8192, IBV_ACCESS_LOCAL_WRITE) == nullptr);
    ibv_mr *mr = ibv_reg_mr(pd, mem.data(), 4096, IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr);
    CHECK(ibv_create_cq(ctx, 129, nullptr, nullptr, 0) == nullptr);
    ibv_cq *cq = ibv_create_cq(ctx, 128, nullptr, nullptr, 0);
    REQUIRE(cq);
    ibv_wq_init_attr wattr{};
    wattr.wq_type = IBV_WQT_RQ;
    wattr.max_wr = 65;
    wattr.max_sge = 1;
    wattr.pd = pd;
    wattr.cq = cq;
    mlx5dv_wq_init_attr mattr{};
    mattr.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
    mattr.striding_rq_attrs.single_stride_log_num_of_bytes = 6;
    mattr.striding_rq_attrs.single_wqe_log_num_of_strides = 3;
    errno = 0;
    CHECK(mlx5dv_create_wq(ctx, &wattr, &mattr) == nullptr && errno == EINVAL);
    mattr.striding_rq_attrs.single_stride_log_num_of_bytes = 5;   // below the cap
    wattr.max_wr = 64;
    CHECK(mlx5dv_create_wq(ctx, &wattr, &mattr) == nullptr && errno == EINVAL);
    mattr.striding_rq_attrs.single_stride_log_num_of_bytes = 6;
    wattr.max_wr = 33;
    ibv_wq *wq = mlx5dv_create_wq(ctx, &wattr, &mattr);
    REQUIRE(wq);
    CHECK(wattr.max_wr == 64);
    mlx5dv_rwq rwq{};
    mlx5dv_obj obj{};
    obj.rwq.in = wq;
    obj.rwq.out = &rwq;
    CHECK(mlx5dv_init_obj(&obj, MLX5DV_OBJ_RWQ) == 0 && rwq.wqe_cnt == 64);
    CHECK(ibv_destroy_wq(wq) == 0);
    CHECK(ibv_destroy_cq(cq) == 0);
    CHECK(ibv_dereg_mr(mr) == 0);
    CHECK(ibv_dealloc_pd(pd) == 0);
    unbind_device(ch, id);
}

/* Writes a classic pcap with the given frames. */
bool write_pcap(const std::string &path, const std::vector<std::vector<uint8_t>> &frames,
                bool nsec, bool big_endian)
{
    FILE *f = fopen(path.c_str(), "wb");
    if (!f)
        return false;
    auto u32 = [&](uint32_t v) {
        v = big_endian ? htobe32(v) : htole32(v);
        fwrite(&v, 4, 1, f);
    };
    auto u16 = [&](uint16_t v) {
        v = big_endian ? htobe16(v) : htole16(v);
        fwrite(&v, 2, 1, f);
    };
    u32(nsec ? 0xa1b23c4d : 0xa1b2c3d4);
    u16(2);
    u16(4);
    u32(0);
    u32(0);
    u32(65535);
    u32(1);
    uint32_t t = 0;
    for (auto &fr : frames)
    {
        u32(1700000000);
        u32(t++);
        u32(uint32_t(fr.size()));
        u32(uint32_t(fr.size()));
        fwrite(fr.data(), 1, fr.size(), f);
    }
    return fclose(f) == 0;
}

std::vector<std::vector<uint8_t>> pcap_frames(int n, int junk_every)
{
    std::vector<std::vector<uint8_t>> v;
    for (int i = 0; i < n; i++)
    {
        if (junk_every && i % junk_every == 0)
            v.push_back(make_frame(100, 0xdead, 9));
        v.push_back(make_frame(hdr_len + 4 + size_t((i * 37) % 380), uint32_t(i)));
    }
    return v;
}

/* Replays a pcap into a striding WQ of ring_size WQEs, re-posting WQEs as
 * production code does (counting strides per WQE from the completions). */
void child_pcap(int expect, int expect_junk, uint64_t min_ns, uint32_t ring_size)
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    mprq_stack s;
    bool built = s.build(ctx, ring_size, 256, 7148, false);
    REQUIRE(built);
    auto ref = pcap_frames(expect, 0);
    auto t0 = std::chrono::steady_clock::now();
    CHECK(s.set_state(IBV_WQS_RDY) == 0);
    for (uint32_t i = 0; i < ring_size; i++)
        s.post_next();   // replay (lossless) waits for buffers
    int got = 0, bad = 0;
    uint32_t used = 0;
    uint64_t cur_seq = 0;
    std::vector<cqe> c;
    auto end = t0 + std::chrono::seconds(20);
    while (got < expect && std::chrono::steady_clock::now() < end)
    {
        c.clear();
        drain_ex(s.cq, c);
        if (c.empty())
        {
            std::this_thread::sleep_for(std::chrono::microseconds(100));
            continue;
        }
        for (auto &e : c)
        {
            if (e.status != IBV_WC_SUCCESS || e.wr_id != cur_seq)
                bad++;
            if (!is_filler(e.byte_len))
            {
                const auto &f = ref[size_t(got)];
                if ((e.byte_len & 0xffff) != f.size()
                    || !frame_at(s.slot_addr(cur_seq) + uint64_t(used) * 64, f))
                    bad++;
                got++;
            }
            used += strides_of(e.byte_len);
            if (used == 8)
            {
                used = 0;
                cur_seq++;
                s.post_next();
            }
        }
    }
    uint64_t ns = uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - t0).count());
    CHECK(got == expect, "got %d of %d", got, expect);
    CHECK(bad == 0, "%d bad completions", bad);
    CHECK(ns >= min_ns, "replay took %" PRIu64 " ns, pacing wants >= %" PRIu64, ns, min_ns);
    CHECK(wait_received(uint64_t(expect + expect_junk)));
    stats_map st = stats();
    CHECK(st["no_flow"] == uint64_t(expect_junk));
    CHECK(st["delivered"] == uint64_t(expect));
    CHECK(st["no_buffer"] == 0 && st["cq_overflow"] == 0);
    s.destroy();
    unbind_device(ch, id);
}

void child_pcap_lossless()
{
    // A 4-WQE ring at full speed: only lossless mode makes this deterministic.
    child_pcap(300, 30, 0, 4);
}

void child_pcap_rate()
{
    // 40 frames at 2000 frames/s: at least ~19.5 ms.  Not lossless, so the
    // ring holds the whole capture and no re-post can come too late.
    child_pcap(40, 0, 15000000, 64);
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */


/* ------------------------------------------------------------------------ */
/* Send queues                                                              */

/* A frame to a multicast group with a valid IPv4 header checksum and the
 * group's MAC (what a sender must produce). */
std::vector<uint8_t> make_send_frame(size_t len, uint32_t tag, uint16_t dst_port = 7148)
{
    const uint32_t group = 0xef0a0101;   // 239.10.1.1
    const uint8_t mac[6] = {0x01, 0x00, 0x5e, 0x0a, 0x01, 0x01};
    std::vector<uint8_t> f = make_frame(len, tag, dst_port, group, mac);
    uint8_t *ip = &f[14];
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += uint32_t(ip[i] << 8 | ip[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    ip[10] = uint8_t(~sum >> 8);
    ip[11] = uint8_t(~sum);
    return f;
}

struct send_stack
{
    ibv_pd *pd = nullptr;
    ibv_cq *cq = nullptr;
    ibv_qp *qp = nullptr;
    ibv_mr *mr = nullptr;
    std::vector<uint8_t> mem;

    bool build(ibv_context *ctx, uint32_t max_send_wr, uint32_t max_send_sge, int access = 0)
    {
        pd = ibv_alloc_pd(ctx);
        cq = ibv_create_cq(ctx, 64, nullptr, nullptr, 0);
        CHECK(pd && cq);
        ibv_qp_init_attr a{};
        a.send_cq = cq;
        a.recv_cq = cq;
        a.qp_type = IBV_QPT_RAW_PACKET;
        a.cap.max_send_wr = max_send_wr;
        a.cap.max_send_sge = max_send_sge;
        qp = ibv_create_qp(pd, &a);     // send only: no receive queue
        CHECK(qp, "create send-only qp: %s", strerror(errno));
        mem.assign(65536, 0);
        mr = ibv_reg_mr(pd, mem.data(), mem.size(), access);   // the NIC only reads: no access flags needed
        CHECK(mr);
        return qp && mr;
    }

    int modify(ibv_qp_state st)
    {
        ibv_qp_attr a{};
        a.qp_state = st;
        a.port_num = 1;
        return ibv_modify_qp(qp, &a, IBV_QP_STATE | (st == IBV_QPS_INIT ? IBV_QP_PORT : 0));
    }

    bool to_rts()
    {
        return modify(IBV_QPS_RESET) == 0 && modify(IBV_QPS_INIT) == 0 && modify(IBV_QPS_RTR) == 0
               && modify(IBV_QPS_RTS) == 0;
    }

    /* Posts one WR whose SGEs are (offset, length) pieces of mem. */
    int post(uint64_t wr_id, std::initializer_list<std::pair<size_t, uint32_t>> sges, bool signaled,
             uint32_t lkey_xor = 0)
    {
        ibv_sge sg[8];
        int n = 0;
        for (auto &p : sges)
        {
            sg[n].addr = reinterpret_cast<uintptr_t>(mem.data()) + p.first;
            sg[n].length = p.second;
            sg[n].lkey = mr->lkey ^ lkey_xor;
            n++;
        }
        ibv_send_wr wr{};
        wr.wr_id = wr_id;
        wr.sg_list = sg;
        wr.num_sge = n;
        wr.opcode = IBV_WR_SEND;
        wr.send_flags = signaled ? IBV_SEND_SIGNALED : 0;
        ibv_send_wr *bad = nullptr;
        int r = ibv_post_send(qp, &wr, &bad);
        if (r != 0)
            CHECK(bad == &wr);
        return r;
    }

    int poll(ibv_wc *wc, int n = 1) { return ibv_poll_cq(cq, n, wc); }

    void destroy()
    {
        if (qp)
            CHECK(ibv_destroy_qp(qp) == 0);
        if (cq)
            CHECK(ibv_destroy_cq(cq) == 0);
        if (mr)
            CHECK(ibv_dereg_mr(mr) == 0);
        if (pd)
            CHECK(ibv_dealloc_pd(pd) == 0);
        *this = send_stack();
    }
};

void case_send_queue()
{
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    stats_map s0 = stats();
    send_stack st;
    REQUIRE_ONCE(st.build(ctx, 4, 2));
    stats_map s1 = stats();
    CHECK(delta(s1, s0, "send_queues") == 1);
    std::vector<uint8_t> f = make_send_frame(200, 1);
    memcpy(st.mem.data(), f.data(), f.size());
    ibv_wc wc[8];

    // Posting needs RTS.
    CHECK(st.post(1, {{0, 200}}, true) == EINVAL);
    CHECK(st.to_rts());
    CHECK(delta(stats(), s0, "rx_ready") == 0);     // no receive queue to make ready
    // One frame gathered from two pieces, signaled.
    CHECK(st.post(10, {{0, 42}, {42, 158}}, true) == 0);
    REQUIRE_ONCE(st.poll(wc) == 1);
    CHECK(wc[0].wr_id == 10 && wc[0].status == IBV_WC_SUCCESS && wc[0].opcode == IBV_WC_SEND);
    stats_map s2 = stats();
    CHECK(delta(s2, s1, "tx_frames") == 1 && delta(s2, s1, "tx_sges") == 2);
    CHECK(delta(s2, s1, "tx_bytes") == 200 && delta(s2, s1, "tx_bad_frames") == 0);
    // Unsignaled WRs produce no completion; a signaled one after them frees all of them.
    for (int i = 0; i < 3; i++)
        CHECK(st.post(20 + i, {{0, 200}}, false) == 0);
    CHECK(st.post(23, {{0, 200}}, true) == 0);
    CHECK(st.post(24, {{0, 200}}, true) == ENOMEM);     // 4 outstanding until polled
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    CHECK(wc[0].wr_id == 23);
    CHECK(st.post(24, {{0, 200}}, true) == 0);           // room again
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    // Too many SGEs, or not a send.
    CHECK(st.post(30, {{0, 50}, {50, 50}, {100, 100}}, true) == EINVAL);
    // Bad frames are counted (and not put on the wire), the WR still completes.
    stats_map s3 = stats();
    std::vector<uint8_t> bad = f;
    bad[24] ^= 0xff;                                    // IPv4 header checksum
    memcpy(st.mem.data() + 1024, bad.data(), bad.size());
    bad = f;
    bad[5] ^= 1;                                        // not the group's MAC
    memcpy(st.mem.data() + 2048, bad.data(), bad.size());
    CHECK(st.post(40, {{1024, 200}}, true) == 0);
    CHECK(st.post(41, {{2048, 200}}, true) == 0);
    CHECK(st.post(42, {{0, 199}}, true) == 0);           // IPv4 total length says 200
    CHECK(st.poll(wc, 8) == 3 && wc[2].status == IBV_WC_SUCCESS);
    stats_map s4 = stats();
    CHECK(delta(s4, s3, "tx_bad_frames") == 3 && delta(s4, s3, "tx_frames") == 0);
    // A gather entry outside the MR: protection error, the QP enters ERR,
    // and what is posted after it is flushed.
    CHECK(st.post(50, {{65536 - 100, 200}}, false) == 0);
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    CHECK(wc[0].wr_id == 50 && wc[0].status == IBV_WC_LOC_PROT_ERR);
    CHECK(st.qp->state == IBV_QPS_ERR);
    CHECK(st.post(51, {{0, 200}}, false) == 0);
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    CHECK(wc[0].wr_id == 51 && wc[0].status == IBV_WC_WR_FLUSH_ERR);
    // Back to work after a reset; a bad lkey is a protection error too.
    CHECK(st.to_rts());
    CHECK(st.post(60, {{0, 200}}, true, 0x5a5a) == 0);
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    CHECK(wc[0].status == IBV_WC_LOC_PROT_ERR);
    CHECK(st.to_rts());
    CHECK(st.post(61, {{0, 200}}, true) == 0);
    REQUIRE_ONCE(st.poll(wc, 8) == 1);
    CHECK(wc[0].status == IBV_WC_SUCCESS);
    stats_map s5 = stats();
    CHECK(delta(s5, s4, "tx_errors") == 2 && delta(s5, s4, "tx_flushed") == 1);
    CHECK(delta(s5, s4, "tx_frames") == 1);
    st.destroy();
    CHECK(delta(stats(), s0, "send_queues") == 0);
    unbind_device(ch, id);
}

/* The send wire: SPEAD2_EMU_SEND_WIRE=udp:127.0.0.1:PORT (PORT from the
 * parent), each frame's UDP payload as one datagram. */
void child_send_udp()
{
    const char *wire = getenv("SPEAD2_EMU_SEND_WIRE");
    REQUIRE(wire);
    int port = atoi(strrchr(wire, ':') + 1);
    int rx = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE_ONCE(bind(rx, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    send_stack st;
    REQUIRE_ONCE(st.build(ctx, 16, 4));
    REQUIRE_ONCE(st.to_rts());
    std::vector<uint8_t> f = make_send_frame(1000, 77);
    memcpy(st.mem.data(), f.data(), f.size());
    CHECK(st.post(1, {{0, 100}, {100, 900}}, true) == 0);
    ibv_wc wc;
    CHECK(st.poll(&wc) == 1 && wc.status == IBV_WC_SUCCESS);
    std::vector<uint8_t> got(2000);
    timeval tv{2, 0};
    setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = recv(rx, got.data(), got.size(), 0);
    CHECK(n == ssize_t(f.size() - hdr_len), "recv: %zd", n);
    CHECK(n > 0 && memcmp(got.data(), f.data() + hdr_len, size_t(n)) == 0);
    st.destroy();
    unbind_device(ch, id);
    close(rx);
}

/* SPEAD2_EMU_SEND_WIRE=pcap:PATH: every full frame appended. */
void child_send_pcap()
{
    const char *wire = getenv("SPEAD2_EMU_SEND_WIRE");
    REQUIRE(wire);
    std::string path = wire + 5;
    rdma_event_channel *ch;
    rdma_cm_id *id;
    ibv_context *ctx = bind_device(&ch, &id);
    REQUIRE(ctx);
    send_stack st;
    REQUIRE_ONCE(st.build(ctx, 16, 4));
    REQUIRE_ONCE(st.to_rts());
    std::vector<uint8_t> f1 = make_send_frame(300, 1), f2 = make_send_frame(64, 2);
    memcpy(st.mem.data(), f1.data(), f1.size());
    memcpy(st.mem.data() + 4096, f2.data(), f2.size());
    CHECK(st.post(1, {{0, 300}}, false) == 0);
    CHECK(st.post(2, {{4096, 64}}, true) == 0);
    ibv_wc wc;
    CHECK(st.poll(&wc) == 1 && wc.wr_id == 2);
    FILE *fp = fopen(path.c_str(), "rb");
    REQUIRE(fp);
    std::vector<uint8_t> data(8192);
    size_t n = fread(data.data(), 1, data.size(), fp);
    fclose(fp);
    CHECK(n == 24 + 16 + 300 + 16 + 64, "pcap is %zu bytes", n);
    uint32_t magic, caplen;
    memcpy(&magic, data.data(), 4);
    CHECK(magic == 0xa1b23c4d);
    memcpy(&caplen, data.data() + 24 + 8, 4);
    CHECK(caplen == 300 && memcmp(data.data() + 40, f1.data(), 300) == 0);
    CHECK(memcmp(data.data() + 40 + 300 + 16, f2.data(), 64) == 0);
    st.destroy();
    unbind_device(ch, id);
}

struct test_case
{
    const char *name;
    std::function<void()> fn;
};

int pick_free_port()
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
}

bool run_in_process(const test_case &t)
{
    g_case_failures = 0;
    printf("[ RUN  ] %s\n", t.name);
    fflush(stdout);
    auto t0 = std::chrono::steady_clock::now();
    t.fn();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    printf("[ %s ] %s (%.0f ms)\n", g_case_failures ? "FAIL" : " OK ", t.name, ms);
    fflush(stdout);
    return g_case_failures == 0;
}

bool run_child(const char *self, const char *name, std::vector<std::string> env_overrides)
{
    printf("[ RUN  ] %s (subprocess)\n", name);
    fflush(stdout);
    std::vector<std::string> env;
    for (char **e = environ; *e; e++)
    {
        std::string kv = *e;
        if (kv.compare(0, 11, "SPEAD2_EMU_") == 0)
            continue;
        env.push_back(kv);
    }
    for (auto &kv : env_overrides)
        env.push_back(kv);
    std::vector<char *> envp;
    for (auto &kv : env)
        envp.push_back(const_cast<char *>(kv.c_str()));
    envp.push_back(nullptr);
    char *argv[] = {const_cast<char *>(self), const_cast<char *>("--case"),
                    const_cast<char *>(name), nullptr};
    pid_t pid;
    if (posix_spawn(&pid, self, nullptr, nullptr, argv, envp.data()) != 0)
    {
        printf("[ FAIL ] %s: cannot spawn\n", name);
        return false;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("[ %s ] %s\n", ok ? " OK " : "FAIL", name);
    fflush(stdout);
    return ok;
}

const std::map<std::string, std::function<void()>> &child_cases()
{
    static const std::map<std::string, std::function<void()>> m = {
        {"no_mprq", child_no_mprq},
        {"send_udp", child_send_udp},
        {"send_pcap", child_send_pcap},
        {"no_flow", child_no_flow},
        {"no_raw", child_no_raw},
        {"memlock", child_memlock},
        {"limits", child_limits},
        {"pcap_lossless", child_pcap_lossless},
        {"pcap_rate", child_pcap_rate},
    };
    return m;
}

}  // anonymous namespace

int main(int argc, char **argv)
{
    setvbuf(stdout, nullptr, _IOLBF, 0);
    g_udp_fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (argc == 3 && strcmp(argv[1], "--case") == 0)
    {
        auto it = child_cases().find(argv[2]);
        if (it == child_cases().end())
            return 2;
        it->second();
        return g_case_failures ? 1 : 0;
    }

    char tmpl[] = "/tmp/spead2-emu-selftest-XXXXXX";
    if (!mkdtemp(tmpl))
    {
        perror("mkdtemp");
        return 1;
    }
    std::string dir = tmpl;
    g_wire_port = pick_free_port();
    g_stats_path = dir + "/stats.json";
    std::string wire = "udp:127.0.0.1:" + std::to_string(g_wire_port);
    setenv("SPEAD2_EMU_WIRE", wire.c_str(), 1);
    setenv("SPEAD2_EMU_STATS", g_stats_path.c_str(), 1);
    setenv("SPEAD2_EMU_INTERFACE", "127.0.0.1", 1);
    setenv("SPEAD2_EMU_MAC", "02:00:00:00:00:01", 1);
    for (const char *v : {"SPEAD2_EMU_NO_MPRQ", "SPEAD2_EMU_NO_FLOW", "SPEAD2_EMU_NO_RAW",
                          "SPEAD2_EMU_MAX_QP_WR", "SPEAD2_EMU_MAX_CQE", "SPEAD2_EMU_MAX_MR_SIZE"})
        unsetenv(v);

    const test_case cases[] = {
        {"exports", case_exports},
        {"discovery", case_discovery},
        {"queries", case_queries},
        {"mprq_basic", case_mprq_basic},
        {"mprq_doorbell_wrap", case_mprq_doorbell_wrap},
        {"mprq_errors", case_mprq_errors},
        {"plain_qp", case_plain_qp},
        {"flow_filter", case_flow_filter},
        {"comp_channel", case_comp_channel},
        {"cq_overflow", case_cq_overflow},
        {"teardown_order", case_teardown_order},
        {"mprq_post_before_rdy", case_mprq_post_before_rdy},
        {"destroy_cq_waits_for_events", case_destroy_cq_waits_for_events},
        {"flow_sharing", case_flow_sharing},
        {"stats_file", case_stats_file},
        {"send_queue", case_send_queue},
    };
    int passed = 0, failed = 0;
    for (auto &t : cases)
        (run_in_process(t) ? passed : failed)++;

    std::string lossless_pcap = dir + "/lossless.pcap", rate_pcap = dir + "/rate.pcap";
    write_pcap(lossless_pcap, pcap_frames(300, 10), false, false);
    write_pcap(rate_pcap, pcap_frames(40, 0), true, true);
    const char *self = "/proc/self/exe";
    char selfbuf[4096];
    ssize_t sl = readlink(self, selfbuf, sizeof(selfbuf) - 1);
    if (sl > 0)
    {
        selfbuf[sl] = '\0';
        self = selfbuf;
    }
    std::string port_wire = "SPEAD2_EMU_WIRE=" + wire;
    struct child
    {
        const char *name;
        std::vector<std::string> env;
    };
    const std::string send_udp = "SPEAD2_EMU_SEND_WIRE=udp:127.0.0.1:" + std::to_string(pick_free_port());
    const std::string send_pcap = "SPEAD2_EMU_SEND_WIRE=pcap:" + dir + "/sent.pcap";
    const child children[] = {
        {"send_udp", {send_udp}},
        {"send_pcap", {send_pcap}},
        {"no_mprq", {"SPEAD2_EMU_NO_MPRQ=1"}},
        {"no_flow", {"SPEAD2_EMU_NO_FLOW=1"}},
        {"no_raw", {"SPEAD2_EMU_NO_RAW=1"}},
        {"memlock", {}},
        {"limits", {"SPEAD2_EMU_MAX_QP_WR=64", "SPEAD2_EMU_MAX_CQE=128",
                    "SPEAD2_EMU_MAX_MR_SIZE=4096", "SPEAD2_EMU_INTERFACE=127.0.0.5"}},
        {"pcap_lossless", {"SPEAD2_EMU_WIRE=pcap:" + lossless_pcap, "SPEAD2_EMU_PCAP_LOSSLESS=1"}},
        {"pcap_rate", {"SPEAD2_EMU_WIRE=pcap:" + rate_pcap, "SPEAD2_EMU_PCAP_RATE=2000"}},
    };
    for (auto &c : children)
        (run_child(self, c.name, c.env) ? passed : failed)++;

    unlink((dir + "/sent.pcap").c_str());
    unlink(lossless_pcap.c_str());
    unlink(rate_pcap.c_str());
    unlink(g_stats_path.c_str());
    rmdir(dir.c_str());
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
