// The ibverbs sender (see ibv_sender.h).
#include "transport/ibv/ibv_sender.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "common/logging.h"
#include "common/socket_util.h"
#include "protocol/frame.h"
#include "transport/ibv/ibv_base.h"

namespace spead2::transport
{

namespace ibv_detail
{

namespace
{

constexpr std::size_t HEADERS = protocol::ETH_IPV4_UDP_HEADERS;
constexpr std::size_t SLOT_ALIGN = 64;
// Work requests handed to ibv_post_send in one call (the last is signaled).
constexpr std::size_t POST_CHAIN_MAX = 64;
// Completions taken per poll.
constexpr int POLL_BATCH = 16;
// Scatter/gather entries per work request we ask for (the device may offer fewer).
constexpr int WANT_SEND_SGE = 8;
// At teardown, how long to wait for the NIC to finish what was posted.
constexpr auto TEARDOWN_WAIT = std::chrono::seconds(5);
const char *const PIN_WHAT = "sender (send buffer, completion queue and memory regions)";

/// A user memory region registered for the NIC to read.
struct user_region
{
    std::uintptr_t start;
    std::size_t length;
    std::uint32_t lkey;
};

class sender_impl final : public ibv_sender
{
    // Declaration order is creation order; destruction runs in reverse (QP,
    // CQ, MRs, memory, then the device objects).
    device_handles d;
    std::unique_ptr<buffer_memory> memory;
    mr_handle slot_mr;
    std::vector<mr_handle> user_mrs;
    cq_handle cq;
    qp_handle qp;
    fd_handle source_socket;    ///< reserves the UDP source port

    std::size_t slot_size = 0, n_slots = 0;
    std::size_t max_packet_size;
    int max_sge = 1;
    int max_poll;
    std::size_t signal_every;
    std::vector<user_region> regions;                         ///< sorted by start
    std::vector<std::array<std::uint8_t, HEADERS>> templates;   ///< per endpoint
    std::uint16_t ip_id = 0;

    // Work requests: sequence numbers count every WR ever posted.
    std::uint64_t posted = 0;        ///< WRs handed to the NIC
    std::uint64_t completed = 0;     ///< WRs the NIC is known to be done with
    std::uint64_t last_zero_copy = 0;   ///< 1 + sequence of the last WR that reads user memory
    bool error = false;
    std::string error_text;
    std::vector<ibv_send_wr> wrs;
    std::vector<ibv_sge> sges;       ///< max_sge per WR of the chain
    std::vector<ibv_wc> wcs;

    mutable std::mutex mutex;
    ibv_sender_stats stats;

    std::uint8_t *slot(std::uint64_t seq) const { return memory->data() + (seq % n_slots) * slot_size; }
    const user_region *find_region(const void *p, std::size_t len) const;
    void set_qp_state(ibv_qp_state state, const char *what);
    bool poll_completions();
    void wait_until(std::uint64_t seq, bool bounded);
    void post_chain(std::size_t n);
    void recover_and_throw();
public:
    sender_impl(const ibv_send_config &config, std::size_t max_packet_size);
    ~sender_impl() override;
    void send(const ibv_send_packet *packets, std::size_t n) override;
    void wait_idle() override;
    void release_user_memory() override;
    ibv_sender_stats get_stats() const override
    {
        std::lock_guard<std::mutex> lock(mutex);
        return stats;
    }
};

sender_impl::sender_impl(const ibv_send_config &config, std::size_t max_packet_size)
    : max_packet_size(max_packet_size), max_poll(config.max_poll)
{
    config.validate();
    const auto &v = ibv::verbs();
    in_addr interface = resolve_ipv4(config.interface_address, "interface address");

    // The UDP source port: a kernel socket bound to the interface holds it
    // for the stream's life, so no kernel application gets the same port.
    source_socket.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!source_socket)
        fail_errno(errno, "socket");
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr = interface;
    if (::bind(source_socket.get(), reinterpret_cast<const sockaddr *>(&local), sizeof(local)) != 0)
        fail_errno(errno, "bind");
    socklen_t local_len = sizeof(local);
    if (::getsockname(source_socket.get(), reinterpret_cast<sockaddr *>(&local), &local_len) != 0)
        fail_errno(errno, "getsockname");
    std::uint8_t source_mac[6];
    if (!interface_mac(interface, source_mac))
        throw std::runtime_error("no network interface has the address " + config.interface_address
                                 + " (needed for its MAC address)");

    // Frame header templates: everything but the lengths, the IP ID and the checksum.
    for (const auto &[host, port] : config.endpoints)
    {
        const in_addr dst = resolve_ipv4(host, "endpoint");
        const std::uint32_t a = ntohl(dst.s_addr);
        protocol::frame_endpoints ends;
        protocol::multicast_mac(ends.dst_mac, a);   // endpoints are multicast
        std::memcpy(ends.src_mac, source_mac, 6);
        ends.src_ip = ntohl(interface.s_addr);
        ends.dst_ip = a;
        ends.src_port = ntohs(local.sin_port);
        ends.dst_port = port;
        protocol::write_eth_ipv4_udp(templates.emplace_back().data(), ends, config.ttl);
    }

    open_interface(d, interface, config.interface_address, config.comp_vector >= 0);
    const ibv_device_attr &attr = d.device_attr;
    slot_size = (max_packet_size + HEADERS + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    if (attr.max_mr_size < slot_size)
        throw std::invalid_argument("max_packet_size is larger than the device's largest memory region");
    const std::size_t limit = std::size_t(std::min(attr.max_qp_wr, attr.max_cqe));
    if (limit == 0 || attr.max_sge < 1)
        throw std::invalid_argument("This device does not have a usable verbs implementation");
    n_slots = std::max<std::size_t>(1, std::min<std::size_t>(config.buffer_size, attr.max_mr_size) / slot_size);
    if (n_slots > limit)
    {
        log_warning("Reducing ibverbs send buffer to %zu packets (device limits: max_qp_wr=%d, max_cqe=%d)",
                    limit, attr.max_qp_wr, attr.max_cqe);
        n_slots = limit;
    }
    max_sge = std::min(WANT_SEND_SGE, attr.max_sge);
    signal_every = std::max<std::size_t>(1, std::min(POST_CHAIN_MAX, n_slots / 2));
    std::size_t pinned = page_round(n_slots * slot_size) + page_round(n_slots * CQE_BYTES);
    for (const auto &r : config.memory_regions)
        pinned += page_round(r.second);
    check_memlock(pinned, PIN_WHAT);

    memory = std::make_unique<buffer_memory>(n_slots * slot_size);
    slot_mr.reset(v.reg_mr(d.pd.get(), memory->data(), n_slots * slot_size, IBV_ACCESS_LOCAL_WRITE));
    if (!slot_mr)
        fail_pinning(errno, "ibv_reg_mr", pinned, PIN_WHAT);
    for (const auto &r : config.memory_regions)
    {
        if (r.second > attr.max_mr_size)
            throw std::invalid_argument("memory region of " + std::to_string(r.second)
                                        + " bytes is larger than the device's largest memory region");
        // The NIC only reads these: no access flags (read-only buffers can be registered).
        ibv_mr *mr = v.reg_mr(d.pd.get(), const_cast<void *>(r.first), r.second, 0);
        if (!mr)
            fail_pinning(errno, "ibv_reg_mr (memory region)", pinned, PIN_WHAT);
        user_mrs.emplace_back(mr);
        regions.push_back({reinterpret_cast<std::uintptr_t>(r.first), r.second, mr->lkey});
    }
    std::sort(regions.begin(), regions.end(),
              [](const user_region &a, const user_region &b) { return a.start < b.start; });

    const int vector = d.comp_channel ? config.comp_vector % std::max(1, d.context->num_comp_vectors) : 0;
    cq.reset(v.create_cq(d.context, int(n_slots), nullptr, d.comp_channel.get(), vector));
    if (!cq)
        fail_pinning(errno, "ibv_create_cq", pinned, PIN_WHAT);
    ibv_qp_init_attr qp_attr{};
    qp_attr.send_cq = cq.get();
    qp_attr.recv_cq = cq.get();
    qp_attr.qp_type = IBV_QPT_RAW_PACKET;
    qp_attr.sq_sig_all = 0;
    qp_attr.cap.max_send_wr = std::uint32_t(n_slots);
    qp_attr.cap.max_recv_wr = 0;
    qp_attr.cap.max_send_sge = std::uint32_t(max_sge);
    qp_attr.cap.max_recv_sge = 0;
    qp.reset(v.create_qp(d.pd.get(), &qp_attr));
    if (!qp)
        fail_qp(errno);
    set_qp_state(IBV_QPS_INIT, "INIT");
    set_qp_state(IBV_QPS_RTR, "RTR");
    set_qp_state(IBV_QPS_RTS, "RTS");

    wrs.resize(std::min(POST_CHAIN_MAX, n_slots));
    sges.resize(wrs.size() * std::size_t(max_sge));
    wcs.resize(POLL_BATCH);
}

sender_impl::~sender_impl()
{
    // The NIC may still be reading the slots (or user memory) for what was
    // posted last: wait for it, but never forever.
    try
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error)
            wait_until(posted, true);
    }
    catch (std::exception &e)
    {
        log_warning("ibverbs sender: %s while shutting down", e.what());
    }
    if (qp && completed < posted)
    {
        // Stops the NIC reading before the memory goes.
        ibv_qp_attr attr{};
        attr.qp_state = IBV_QPS_RESET;
        ibv::verbs().modify_qp(qp.get(), &attr, IBV_QP_STATE);
    }
}

void sender_impl::set_qp_state(ibv_qp_state state, const char *what)
{
    ibv_qp_attr attr{};
    attr.qp_state = state;
    int mask = IBV_QP_STATE;
    if (state == IBV_QPS_INIT)
    {
        attr.port_num = d.port_num;
        mask |= IBV_QP_PORT;
    }
    int err = ibv::verbs().modify_qp(qp.get(), &attr, mask);
    if (err != 0)
        fail_errno(err, std::string("ibv_modify_qp (to ") + what + ")");
}

const user_region *sender_impl::find_region(const void *p, std::size_t len) const
{
    if (regions.empty())
        return nullptr;
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    auto it = std::upper_bound(regions.begin(), regions.end(), a,
                               [](std::uintptr_t x, const user_region &r) { return x < r.start; });
    if (it == regions.begin())
        return nullptr;
    --it;
    if (a - it->start <= it->length && len <= it->length - (a - it->start))
        return &*it;
    return nullptr;
}

/// Take what the CQ has; returns whether anything completed.
bool sender_impl::poll_completions()
{
    bool progress = false;
    while (true)
    {
        int n = ibv_poll_cq(cq.get(), POLL_BATCH, wcs.data());
        if (n < 0)
            fail_errno(EIO, "ibv_poll_cq");
        for (int i = 0; i < n; i++)
        {
            const ibv_wc &wc = wcs[i];
            if (wc.status != IBV_WC_SUCCESS)
            {
                stats.error_completions++;
                if (!error)
                {
                    error = true;
                    error_text = std::string("ibverbs send failed: ") + wc_status_name(wc.status)
                                 + " (completion status " + std::to_string(int(wc.status)) + ")";
                }
            }
            // Send completions come in order: everything up to this WR is done.
            completed = std::max(completed, wc.wr_id + 1);
            progress = true;
        }
        if (n < POLL_BATCH)
            return progress;
    }
}

/// Wait until every WR before sequence @a seq has completed (or an error
/// completion arrived).  @a bounded: give up after TEARDOWN_WAIT.
void sender_impl::wait_until(std::uint64_t seq, bool bounded)
{
    const auto deadline = std::chrono::steady_clock::now() + TEARDOWN_WAIT;
    int polls = 0;
    while (completed < seq && !error)
    {
        if (poll_completions())
        {
            polls = 0;
            continue;
        }
        if (bounded && std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("the NIC did not complete the last sends in time");
        if (!d.comp_channel || ++polls < max_poll)
            continue;   // busy polling
        // Sleep on the completion channel: arm, re-check (a completion may
        // have arrived before arming), then wait for the event.
        if (ibv_req_notify_cq(cq.get(), 0) != 0)
            fail_errno(EIO, "ibv_req_notify_cq");
        if (poll_completions())
        {
            polls = 0;
            continue;
        }
        pollfd pfd{d.comp_channel->fd, POLLIN, 0};
        int r = ::poll(&pfd, 1, 100);   // re-poll now and then regardless
        if (r > 0)
        {
            ibv_cq *ev_cq;
            void *ev_ctx;
            if (ibv::verbs().get_cq_event(d.comp_channel.get(), &ev_cq, &ev_ctx) == 0)
                ibv::verbs().ack_cq_events(ev_cq, 1);
        }
        polls = 0;
    }
}

void sender_impl::post_chain(std::size_t n)
{
    if (n == 0)
        return;
    wrs[n - 1].send_flags |= IBV_SEND_SIGNALED;
    wrs[n - 1].next = nullptr;
    ibv_send_wr *bad = nullptr;
    int err = ibv_post_send(qp.get(), wrs.data(), &bad);
    if (err != 0)
    {
        const std::size_t ok = bad ? std::size_t(bad - wrs.data()) : 0;
        posted += ok;
        fail_errno(err, "ibv_post_send");
    }
    posted += n;
}

/// After an error completion: the QP is in the error state and flushes what
/// is left.  Reset it (RESET discards all outstanding WRs, so every slot is
/// free again), bring it back to RTS and report the error.
void sender_impl::recover_and_throw()
{
    const std::string text = error_text;
    set_qp_state(IBV_QPS_RESET, "RESET");
    while (ibv_poll_cq(cq.get(), POLL_BATCH, wcs.data()) > 0)
    {
    }
    set_qp_state(IBV_QPS_INIT, "INIT");
    set_qp_state(IBV_QPS_RTR, "RTR");
    set_qp_state(IBV_QPS_RTS, "RTS");
    completed = posted;
    error = false;
    error_text.clear();
    log_warning("%s; the send queue was reset", text.c_str());
    throw std::system_error(EIO, std::generic_category(), text);
}

void sender_impl::send(const ibv_send_packet *packets, std::size_t n)
{
    std::lock_guard<std::mutex> lock(mutex);
    std::size_t chain = 0;
    for (std::size_t i = 0; i < n; i++)
    {
        const ibv_send_packet &pkt = packets[i];
        if (pkt.size > max_packet_size || pkt.substream >= templates.size() || pkt.n_iov == 0)
            throw std::invalid_argument("ibverbs sender: packet does not fit the stream");
        // A free slot: the chain built so far occupies slots too.
        const std::uint64_t seq = posted + chain;
        if (seq - completed >= n_slots || chain == wrs.size())
        {
            post_chain(chain);
            chain = 0;
            if (posted - completed >= n_slots)
                wait_until(posted - n_slots + 1, false);
        }
        if (error)
            recover_and_throw();
        const std::uint64_t s = posted + chain;
        std::uint8_t *frame = slot(s);
        std::memcpy(frame, templates[pkt.substream].data(), templates[pkt.substream].size());
        protocol::finish_eth_ipv4_udp(frame, pkt.size, ip_id++);
        // The SPEAD header (always copied: its buffer is reused).
        std::size_t fill = HEADERS;
        std::memcpy(frame + fill, pkt.iov[0].iov_base, pkt.iov[0].iov_len);
        fill += pkt.iov[0].iov_len;

        ibv_sge *sg = &sges[chain * std::size_t(max_sge)];
        int nsg = 1;
        sg[0].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(frame));
        sg[0].length = std::uint32_t(fill);
        sg[0].lkey = slot_mr->lkey;
        bool last_is_slot = true;
        bool zero_copy = false;
        for (std::size_t j = 1; j < pkt.n_iov; j++)
        {
            const iovec &piece = pkt.iov[j];
            // Room for this entry and a slot entry after it.
            const user_region *r = nsg + 2 <= max_sge ? find_region(piece.iov_base, piece.iov_len) : nullptr;
            if (r)
            {
                sg[nsg].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(piece.iov_base));
                sg[nsg].length = std::uint32_t(piece.iov_len);
                sg[nsg].lkey = r->lkey;
                nsg++;
                last_is_slot = false;
                zero_copy = true;
                stats.zero_copy_bytes += piece.iov_len;
            }
            else
            {
                std::memcpy(frame + fill, piece.iov_base, piece.iov_len);
                if (last_is_slot)
                    sg[nsg - 1].length += std::uint32_t(piece.iov_len);
                else
                {
                    sg[nsg].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(frame + fill));
                    sg[nsg].length = std::uint32_t(piece.iov_len);
                    sg[nsg].lkey = slot_mr->lkey;
                    nsg++;
                    last_is_slot = true;
                }
                fill += piece.iov_len;
                stats.copied_bytes += piece.iov_len;
            }
        }
        ibv_send_wr &wr = wrs[chain];
        std::memset(&wr, 0, sizeof(wr));
        wr.wr_id = s;
        wr.sg_list = sg;
        wr.num_sge = nsg;
        wr.opcode = IBV_WR_SEND;
        wr.send_flags = (s + 1) % signal_every == 0 ? IBV_SEND_SIGNALED : 0;
        if (chain > 0)
            wrs[chain - 1].next = &wr;
        if (zero_copy)
            last_zero_copy = s + 1;
        chain++;
        stats.packets++;
    }
    post_chain(chain);
    poll_completions();   // cheap: give slots back early
    if (error)
        recover_and_throw();
}

void sender_impl::wait_idle()
{
    std::lock_guard<std::mutex> lock(mutex);
    wait_until(posted, false);
    if (error)
        recover_and_throw();
}

void sender_impl::release_user_memory()
{
    std::lock_guard<std::mutex> lock(mutex);
    if (completed >= last_zero_copy)
        return;
    wait_until(last_zero_copy, false);
    if (error)
        recover_and_throw();
}

} // anonymous namespace

} // namespace ibv_detail

std::unique_ptr<ibv_sender> make_ibv_sender(const ibv_send_config &config, std::size_t max_packet_size)
{
    return std::make_unique<ibv_detail::sender_impl>(config, max_packet_size);
}

} // namespace spead2::transport
