// The plain reader (see ibv_plain.h).
#include "transport/ibv/ibv_plain.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "common/logging.h"

namespace spead2::transport::ibv_detail
{

namespace
{

// Slots also leave room for one 802.1Q tag, and start on a cache line
// (64 bytes) so the NIC's writes do not straddle lines.
constexpr std::size_t VLAN_TAG_SIZE = 4;
constexpr std::size_t SLOT_ALIGN = 64;
// Receive work requests are re-posted in chains of this many.
constexpr std::size_t REPOST_CHAIN_MAX = 64;

} // anonymous namespace

plain_reader::plain_reader(packet_sink &sink, worker &thread, const ibv_config &cfg)
    : ibv_reader_base(sink, thread, cfg)
{
    // If anything below throws, q is destroyed (in the right order) and the
    // base releases the rest.
    queue_objects &o = q.emplace();
    const auto &v = ibv::verbs();
    if (!(device_attr.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING))
        throw std::invalid_argument("This device does not support flow steering");
    slot_size = (config.max_size + FRAME_OVERHEAD + VLAN_TAG_SIZE + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    if (device_attr.max_mr_size < slot_size)
        throw std::invalid_argument("max_size is larger than the device's largest memory region");
    std::size_t size = std::min<std::size_t>(config.buffer_size, device_attr.max_mr_size);
    n_slots = std::max<std::size_t>(1, size / slot_size);
    const std::size_t limit = std::size_t(std::min(device_attr.max_qp_wr, device_attr.max_cqe));
    if (limit == 0)
        throw std::invalid_argument("This device does not have a usable verbs implementation");
    if (n_slots > limit)
    {
        log_warning("Reducing ibverbs buffer to %zu packets (device limits: max_qp_wr=%d, max_cqe=%d)",
                    limit, device_attr.max_qp_wr, device_attr.max_cqe);
        n_slots = limit;
    }
    const std::size_t pinned = page_round(n_slots * slot_size) + page_round(n_slots * CQE_BYTES)
                               + page_round(n_slots * sizeof(ibv_sge));
    check_memlock(pinned);
    const int vector = comp_channel ? config.comp_vector % std::max(1, context->num_comp_vectors) : 0;
    o.cq.reset(v.create_cq(context, int(n_slots), nullptr, comp_channel, vector));
    if (!o.cq)
        fail_pinning(errno, "ibv_create_cq", pinned);
    // Receive only: no send queue (the QP still needs a send CQ pointer,
    // which nothing will ever complete on).
    ibv_qp_init_attr qp_attr{};
    qp_attr.send_cq = o.cq.get();
    qp_attr.recv_cq = o.cq.get();
    qp_attr.qp_type = IBV_QPT_RAW_PACKET;
    qp_attr.cap.max_send_wr = 0;
    qp_attr.cap.max_recv_wr = std::uint32_t(n_slots);
    qp_attr.cap.max_send_sge = 0;
    qp_attr.cap.max_recv_sge = 1;
    o.qp.reset(v.create_qp(pd, &qp_attr));
    if (!o.qp)
        fail_qp(errno);
    set_qp_state(IBV_QPS_INIT, "INIT");
    o.memory = std::make_unique<buffer_memory>(n_slots * slot_size);
    o.mr.reset(register_memory(pd, o.memory->data(), n_slots * slot_size));
    if (!o.mr)
        fail_pinning(errno, "ibv_reg_mr", pinned);
    wrs.resize(n_slots);
    sges.resize(n_slots);
    wcs.resize(std::min<std::size_t>(n_slots, MAX_CQES_PER_POLL));
    post_all();
    o.flows = create_flows(o.qp.get());
}

void plain_reader::release()
{
    q.reset();   // flows, QP, CQ, MR, memory
    close_common();
}

std::vector<const void *> plain_reader::event_objects() const
{
    return {q->cq.get(), q->qp.get()};
}

void plain_reader::set_qp_state(ibv_qp_state state, const char *what)
{
    ibv_qp_attr attr{};
    attr.qp_state = state;
    int mask = IBV_QP_STATE;
    if (state == IBV_QPS_INIT)
    {
        attr.port_num = port_num;
        mask |= IBV_QP_PORT;
    }
    int err = ibv::verbs().modify_qp(q->qp.get(), &attr, mask);   // returns the error number
    if (err != 0)
        fail_errno(err, std::string("ibv_modify_qp (to ") + what + ")");
}

void plain_reader::post_all()
{
    std::vector<std::size_t> all(n_slots);
    for (std::size_t i = 0; i < n_slots; i++)
        all[i] = i;
    for (std::size_t i = 0; i < n_slots; i += REPOST_CHAIN_MAX)
    {
        int err = post(all.data() + i, std::min(REPOST_CHAIN_MAX, n_slots - i));
        if (err != 0)
            fail_errno(err, "ibv_post_recv");
    }
}

void plain_reader::recover()
{
    // RESET discards the posted work requests; the QP's completions still
    // queued describe slots we are about to re-post, so drop them too.
    set_qp_state(IBV_QPS_RESET, "RESET");
    while (ibv_poll_cq(q->cq.get(), int(wcs.size()), wcs.data()) > 0)
    {
    }
    set_qp_state(IBV_QPS_INIT, "INIT");
    post_all();
    set_qp_state(IBV_QPS_RTR, "RTR");
}

int plain_reader::post(const std::size_t *slots, std::size_t n)
{
    for (std::size_t i = 0; i < n; i++)
    {
        const std::size_t s = slots[i];
        sges[s].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(q->memory->data() + s * slot_size));
        sges[s].length = std::uint32_t(slot_size);
        sges[s].lkey = q->mr->lkey;
        wrs[s].wr_id = s;
        wrs[s].sg_list = &sges[s];
        wrs[s].num_sge = 1;
        wrs[s].next = i + 1 < n ? &wrs[slots[i + 1]] : nullptr;
    }
    ibv_recv_wr *bad = nullptr;
    // ibv_post_recv returns the error number (errno is not set).
    return n ? ibv_post_recv(q->qp.get(), &wrs[slots[0]], &bad) : 0;
}

void plain_reader::start()
{
    set_qp_state(IBV_QPS_RTR, "RTR");
    join_groups();
    start_polling();
}

bool plain_reader::poll_once(batch &b, bool &partial)
{
    int n = ibv_poll_cq(q->cq.get(), int(wcs.size()), wcs.data());
    if (n < 0)
    {
        failure = "ibv_poll_cq failed (" + std::to_string(n) + ")";
        return true;
    }
    partial = std::size_t(n) == wcs.size();
    std::size_t bad = 0;
    bool running = true;
    std::size_t repost[REPOST_CHAIN_MAX];
    std::size_t n_repost = 0;
    auto flush_reposts = [&] {
        if (need_recovery || n_repost == 0)
            return;   // recovery re-posts every slot
        int err = post(repost, n_repost);
        if (err != 0)
        {
            log_warning("ibv_post_recv failed: %s; resetting the receive queue", std::strerror(err));
            need_recovery = true;
        }
        n_repost = 0;
    };
    for (int i = 0; i < n && !need_recovery; i++)
    {
        const std::size_t slot = std::size_t(wcs[i].wr_id);
        if (wcs[i].status == IBV_WC_SUCCESS)
        {
            consecutive_recoveries = 0;
            if (running)
                running = deliver(b, q->memory->data() + slot * slot_size, wcs[i].byte_len, bad);
        }
        else
        {
            error_completion(wcs[i].status);
            // A frame too large for its slot leaves the queue usable; any
            // other error (and the flushes that follow it) means the queue
            // pair is in the error state and receives nothing more.
            if (wcs[i].status != IBV_WC_LOC_LEN_ERR)
            {
                need_recovery = true;
                break;
            }
        }
        repost[n_repost++] = slot;
        if (n_repost == REPOST_CHAIN_MAX)
            flush_reposts();
    }
    flush_reposts();
    if (need_recovery)
    {
        // The queue pair failed (an error completion, or ibv_post_recv refused
        // because it is already in the error state).  Frames that completed
        // successfully before the failure may still be queued in the CQ: hand
        // them over now, as the reset would discard them.
        int m;
        while ((m = ibv_poll_cq(q->cq.get(), int(wcs.size()), wcs.data())) > 0)
        {
            for (int i = 0; i < m; i++)
            {
                if (wcs[i].status == IBV_WC_SUCCESS)
                {
                    consecutive_recoveries = 0;
                    if (running)
                        running = deliver(b, q->memory->data() + std::size_t(wcs[i].wr_id) * slot_size,
                                          wcs[i].byte_len, bad);
                }
                else if (wcs[i].status != IBV_WC_WR_FLUSH_ERR)
                    error_completion(wcs[i].status);
            }
        }
    }
    if (bad)
        b.malformed(bad);
    return running;
}

} // namespace spead2::transport::ibv_detail
