#include "transport/ibv/ibv_reader.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/socket_util.h"
#include "common/thread_pool.h"
#include "protocol/frame.h"
#include "transport/ibv/loader.h"

namespace spead2::transport
{

namespace
{

// Ethernet + IPv4 + UDP headers in front of each payload (no VLAN, no IP options).
constexpr std::size_t FRAME_OVERHEAD = 14 + 20 + 8;
// MPRQ geometry, as in the reference: 64-byte strides, 1 MiB per work request.
constexpr int MPRQ_STRIDE_LOG = 6;
constexpr int MPRQ_WQE_LOG = 20;
// Completions handled per poll pass before yielding.
constexpr int MAX_CQES_PER_POLL = 256;
// Plain reader: receive work requests are re-posted in chains of this many.
constexpr std::size_t REPOST_CHAIN_MAX = 64;
constexpr std::size_t HUGE_PAGE_SIZE = 2 * 1024 * 1024;

/// Thrown internally when a device lacks multi-packet receive: fall back.
struct mprq_unsupported : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_errno(int err, const std::string &what)
{
    throw std::system_error(err, std::generic_category(), what);
}

/// Creating a raw packet QP fails with EPERM/EINVAL without CAP_NET_RAW: say so.
[[noreturn]] void fail_qp(int err)
{
    if (err == EPERM || err == EACCES || err == EINVAL)
        throw std::runtime_error(std::string("could not create a raw packet queue pair (") + std::strerror(err)
                                 + "): this could be a permission problem - do you have CAP_NET_RAW? "
                                   "(run as root, or grant it with setcap cap_net_raw+ep)");
    fail_errno(err, "creating the raw packet queue pair");
}

bool is_multicast(in_addr a) { return IN_MULTICAST(ntohl(a.s_addr)); }

/// MAC address of the local interface that has IPv4 address @a addr.
bool interface_mac(in_addr addr, std::uint8_t mac[6])
{
    ifaddrs *list = nullptr;
    if (getifaddrs(&list) != 0)
        return false;
    std::string name;
    for (ifaddrs *i = list; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET
            && reinterpret_cast<sockaddr_in *>(i->ifa_addr)->sin_addr.s_addr == addr.s_addr)
            name = i->ifa_name;
    bool found = false;
    for (ifaddrs *i = list; i && !name.empty(); i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_PACKET && name == i->ifa_name)
        {
            auto *ll = reinterpret_cast<sockaddr_ll *>(i->ifa_addr);
            std::memcpy(mac, ll->sll_addr, 6);
            found = true;
            break;
        }
    freeifaddrs(list);
    return found;
}

/// Receive memory, on huge pages where the system has them.
class buffer_memory
{
    void *ptr = MAP_FAILED;
    std::size_t length = 0;
public:
    explicit buffer_memory(std::size_t size)
    {
        const std::size_t huge_len = (size + HUGE_PAGE_SIZE - 1) / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE;
        ptr = mmap(nullptr, huge_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        length = huge_len;
        if (ptr == MAP_FAILED)
        {
            length = size;
            ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (ptr == MAP_FAILED)
                fail_errno(errno, "allocating " + std::to_string(size) + " bytes of receive buffer");
            madvise(ptr, size, MADV_HUGEPAGE);
        }
    }
    ~buffer_memory()
    {
        if (ptr != MAP_FAILED)
            munmap(ptr, length);
    }
    std::uint8_t *data() const { return static_cast<std::uint8_t *>(ptr); }
};

/// Destroy a verbs object if there is one, and forget it.
template<typename T, typename F>
void destroy(T *&object, F &&destroy_fn)
{
    if (object)
        destroy_fn(object);
    object = nullptr;
}

/// The packed flow rule: attributes followed by three specs.
struct flow_rule
{
    ibv_flow_attr attr;
    ibv_flow_spec_eth eth;
    ibv_flow_spec_ipv4 ip;
    ibv_flow_spec_tcp_udp udp;
} __attribute__((packed));

// ---------------------------------------------------------------- reader base

class ibv_reader_base : public reader
{
protected:
    ibv_config config;
    in_addr interface{};
    rdma_event_channel *event_channel = nullptr;
    rdma_cm_id *cm_id = nullptr;
    ibv_context *context = nullptr;    // owned by cm_id
    ibv_pd *pd = nullptr;
    ibv_comp_channel *comp_channel = nullptr;
    ibv_device_attr device_attr{};
    std::vector<ibv_flow *> flows;
    std::vector<in_addr> groups;
    int join_socket = -1;
    bool registered = false;
    bool closed = false;

    ibv_reader_base(packet_sink &sink, worker &thread, const ibv_config &config);
    void create_flows(ibv_qp *qp);
    void destroy_flows();
    void join_groups();
    void close_common();
    /// One pass over the completion queue; returns false if the stream stopped.
    /// Sets @a partial when the pass hit MAX_CQES_PER_POLL.
    virtual bool poll_once(batch &b, bool &partial) = 0;
    virtual ibv_cq *notify_cq() = 0;
    void handle(bool from_channel);
    void schedule_poll();
    bool deliver(batch &b, const std::uint8_t *frame, std::size_t length, std::size_t &bad);
    void on_stop_requested() override;
public:
    ~ibv_reader_base() override;
    void start_polling();
};

ibv_reader_base::ibv_reader_base(packet_sink &sink, worker &thread, const ibv_config &config)
    : reader(sink, thread), config(config)
{
    config.validate();
    const auto &cm = ibv::rdmacm();
    const auto &v = ibv::verbs();
    interface = resolve_ipv4(config.interface_address, "interface address");
    try
    {
        event_channel = cm.create_event_channel();
        if (!event_channel)
            fail_errno(errno, "rdma_create_event_channel");
        if (cm.create_id(event_channel, &cm_id, nullptr, RDMA_PS_UDP) != 0)
            fail_errno(errno, "rdma_create_id");
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr = interface;
        if (cm.bind_addr(cm_id, reinterpret_cast<sockaddr *>(&sa)) != 0 || !cm_id->verbs)
        {
            int err = errno;
            throw std::runtime_error("no RDMA device owns the interface address " + config.interface_address
                                     + " (rdma_bind_addr: " + std::strerror(err)
                                     + "); check that the NIC's RDMA driver is loaded (ibv_devices, rdma link)");
        }
        context = cm_id->verbs;
        if (v.query_device(context, &device_attr) != 0)
            fail_errno(errno, "ibv_query_device");
        pd = v.alloc_pd(context);
        if (!pd)
            fail_errno(errno, "ibv_alloc_pd");
        if (config.comp_vector >= 0)
        {
            comp_channel = v.create_comp_channel(context);
            if (!comp_channel)
                fail_errno(errno, "ibv_create_comp_channel");
            int flags = fcntl(comp_channel->fd, F_GETFL);
            if (flags < 0 || fcntl(comp_channel->fd, F_SETFL, flags | O_NONBLOCK) < 0)
                fail_errno(errno, "making the completion channel non-blocking");
        }
    }
    catch (...)
    {
        close_common();
        throw;
    }
}

ibv_reader_base::~ibv_reader_base()
{
    // Derived destructors release their queues first, then call close_common.
}

void ibv_reader_base::create_flows(ibv_qp *qp)
{
    std::uint8_t local_mac[6] = {};
    bool have_local_mac = false;
    for (const auto &[host, port] : config.endpoints)
    {
        alignas(8) flow_rule rule;   // packed, but its start is aligned for ibv_flow_attr
        std::memset(&rule, 0, sizeof(rule));
        rule.attr.type = IBV_FLOW_ATTR_NORMAL;
        rule.attr.size = sizeof(rule);
        rule.attr.priority = 0;
        rule.attr.num_of_specs = 3;
        rule.attr.port = cm_id->port_num;
        rule.eth.type = IBV_FLOW_SPEC_ETH;
        rule.eth.size = sizeof(rule.eth);
        rule.ip.type = IBV_FLOW_SPEC_IPV4;
        rule.ip.size = sizeof(rule.ip);
        rule.udp.type = IBV_FLOW_SPEC_UDP;
        rule.udp.size = sizeof(rule.udp);
        rule.udp.val.dst_port = htons(port);
        rule.udp.mask.dst_port = 0xffff;
        in_addr addr{};
        if (!host.empty())
            addr = resolve_ipv4(host, "endpoint");
        if (addr.s_addr != htonl(INADDR_ANY))
        {
            // Exact matches only (no partial masks): other receivers on the
            // same NIC must not see each other's traffic.
            if (is_multicast(addr))
            {
                const std::uint32_t a = ntohl(addr.s_addr);
                const std::uint8_t mac[6] = {0x01, 0x00, 0x5e, std::uint8_t((a >> 16) & 0x7f),
                                             std::uint8_t(a >> 8), std::uint8_t(a)};
                std::memcpy(rule.eth.val.dst_mac, mac, 6);
            }
            else
            {
                if (!have_local_mac)
                {
                    if (!interface_mac(addr, local_mac))
                        throw std::invalid_argument("unicast endpoint " + host
                                                    + " is not the address of a local interface");
                    have_local_mac = true;
                }
                std::memcpy(rule.eth.val.dst_mac, local_mac, 6);
            }
            std::memset(rule.eth.mask.dst_mac, 0xff, 6);
            rule.ip.val.dst_ip = addr.s_addr;
            rule.ip.mask.dst_ip = 0xffffffff;
            if (is_multicast(addr))
                groups.push_back(addr);
        }
        ibv_flow *flow = ibv_create_flow(qp, reinterpret_cast<ibv_flow_attr *>(&rule));
        if (!flow)
        {
            int err = errno;
            throw std::runtime_error("could not create a flow-steering rule for " + host + ":"
                                     + std::to_string(port) + " (" + std::strerror(err)
                                     + "): the device or its firmware may not support flow steering");
        }
        flows.push_back(flow);
    }
}

void ibv_reader_base::destroy_flows()
{
    for (ibv_flow *f : flows)
        ibv_destroy_flow(f);
    flows.clear();
}

void ibv_reader_base::join_groups()
{
    if (groups.empty())
        return;
    join_socket = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (join_socket < 0)
        fail_errno(errno, "socket for multicast subscription");
    int one = 1;
    setsockopt(join_socket, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    for (in_addr g : groups)
    {
        ip_mreq mreq{};
        mreq.imr_multiaddr = g;
        mreq.imr_interface = interface;
        if (setsockopt(join_socket, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0)
        {
            char text[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &g, text, sizeof(text));
            fail_errno(errno, std::string("joining multicast group ") + text + " on " + config.interface_address);
        }
    }
}

void ibv_reader_base::close_common()
{
    if (closed)
        return;
    closed = true;
    destroy_flows();
    if (join_socket >= 0)
        ::close(join_socket);
    join_socket = -1;
    const auto &v = ibv::verbs();
    destroy(comp_channel, v.destroy_comp_channel);
    destroy(pd, v.dealloc_pd);
    const auto &cm = ibv::rdmacm();
    destroy(cm_id, cm.destroy_id);
    destroy(event_channel, cm.destroy_event_channel);
}

bool ibv_reader_base::deliver(batch &b, const std::uint8_t *frame, std::size_t length, std::size_t &bad)
{
    protocol::udp_frame udp;
    if (protocol::decode_frame(udp, protocol::link_type::ethernet, frame, length) != protocol::frame_status::ok)
    {
        bad++;
        return true;
    }
    if (udp.payload_size > config.max_size)
    {
        bad++;
        return true;
    }
    protocol::packet_header ph;
    if (!protocol::decode_datagram(ph, udp.payload, udp.payload_size))
    {
        bad++;
        return true;
    }
    return b.add(&ph, 1);
}

void ibv_reader_base::start_polling()
{
    auto self = std::static_pointer_cast<ibv_reader_base>(shared_from_this());
    thread.post([self] {
        if (self->stopping.load())
            return;
        if (self->comp_channel)
        {
            ibv_req_notify_cq(self->notify_cq(), 0);
            self->thread.add_fd(self->comp_channel->fd, [self] { self->handle(true); });
            self->registered = true;
        }
        self->handle(false);
    });
}

void ibv_reader_base::schedule_poll()
{
    auto self = std::static_pointer_cast<ibv_reader_base>(shared_from_this());
    thread.post([self] { self->handle(false); });
}

void ibv_reader_base::handle(bool from_channel)
{
    if (stopping.load())
        return;
    const auto &v = ibv::verbs();
    if (from_channel)
    {
        ibv_cq *cq;
        void *ctx;
        while (v.get_cq_event(comp_channel, &cq, &ctx) == 0)
            v.ack_cq_events(cq, 1);
    }
    bool repoll = false;
    {
        batch b(sink);
        if (!b.active())
            return;
        for (int i = 0; i < config.max_poll; i++)
        {
            bool last = i == config.max_poll - 1;
            if (comp_channel && last)
                ibv_req_notify_cq(notify_cq(), 0);   // arm before the final poll: no lost wake-up
            bool partial = false;
            if (!poll_once(b, partial))
                return;
            if (partial && last)
                repoll = true;
        }
    }
    if (!comp_channel || repoll)
        schedule_poll();   // busy polling (comp_vector < 0), or more work is waiting
}

void ibv_reader_base::on_stop_requested()
{
    auto self = std::static_pointer_cast<ibv_reader_base>(shared_from_this());
    thread.post([self] {
        if (self->registered)
        {
            self->thread.remove_fd(self->comp_channel->fd);
            self->registered = false;
        }
    });
}

// ----------------------------------------------------------------- MPRQ reader

class mprq_reader : public ibv_reader_base
{
    ibv_cq_ex *cq = nullptr;
    ibv_wq *wq = nullptr;
    ibv_rwq_ind_table *ind_table = nullptr;
    ibv_qp *qp = nullptr;
    ibv_mr *mr = nullptr;
    std::unique_ptr<buffer_memory> memory;
    mlx5dv_rwq rwq{};
    std::size_t stride_size = 0, strides_per_wqe = 0, wqe_size = 0, n_wqe = 0;
    std::size_t buffer_size = 0;
    std::uint32_t post_head = 0;     ///< WQEs posted so far
    std::size_t current_wqe = 0;     ///< index of the WQE being filled
    std::size_t strides_used = 0;    ///< strides consumed in it
    void post_wqe(std::size_t index);
    void release();
protected:
    bool poll_once(batch &b, bool &partial) override;
    ibv_cq *notify_cq() override { return ibv_cq_ex_to_cq(cq); }
public:
    mprq_reader(packet_sink &sink, worker &thread, const ibv_config &config);
    ~mprq_reader() override { release(); }
    void start() override;
    void close() override { release(); }
};

mprq_reader::mprq_reader(packet_sink &sink, worker &thread, const ibv_config &cfg)
    : ibv_reader_base(sink, thread, cfg)
{
    try
    {
        const auto *m = ibv::mlx5();
        if (!m || !m->is_supported(context->device))
            throw mprq_unsupported("the device is not an mlx5 device (or libmlx5 is missing)");
        mlx5dv_context dv{};
        dv.comp_mask = MLX5DV_CONTEXT_MASK_STRIDING_RQ;
        if (m->query_device(context, &dv) != 0 || !(dv.comp_mask & MLX5DV_CONTEXT_MASK_STRIDING_RQ)
            || !(dv.flags & MLX5DV_CONTEXT_FLAGS_MPW_ALLOWED)
            || !(dv.striding_rq_caps.supported_qpts & (1U << IBV_QPT_RAW_PACKET)))
            throw mprq_unsupported("the device does not offer striding receive queues for raw packets");
        const auto &caps = dv.striding_rq_caps;
        const int stride_log = std::clamp<int>(MPRQ_STRIDE_LOG, caps.min_single_stride_log_num_of_bytes,
                                               caps.max_single_stride_log_num_of_bytes);
        const int strides_log = std::clamp<int>(MPRQ_WQE_LOG - stride_log, caps.min_single_wqe_log_num_of_strides,
                                                caps.max_single_wqe_log_num_of_strides);
        stride_size = std::size_t(1) << stride_log;
        strides_per_wqe = std::size_t(1) << strides_log;
        wqe_size = stride_size * strides_per_wqe;
        if (config.max_size + FRAME_OVERHEAD > wqe_size)
            throw mprq_unsupported("max_size is larger than a multi-packet work request");
        std::size_t want = std::max(config.buffer_size, 2 * wqe_size);
        std::size_t strides = std::min<std::size_t>(want >> stride_log, std::size_t(device_attr.max_cqe));
        n_wqe = std::min<std::size_t>(strides >> strides_log, std::size_t(device_attr.max_qp_wr));
        if (n_wqe < 2)
            throw mprq_unsupported("device limits leave fewer than two multi-packet work requests");
        buffer_size = n_wqe * wqe_size;
        if (buffer_size < config.buffer_size)
            log_warning("Reducing ibverbs buffer from %zu to %zu bytes (device limits: max_cqe=%d, max_qp_wr=%d)",
                        config.buffer_size, buffer_size, device_attr.max_cqe, device_attr.max_qp_wr);

        ibv_cq_init_attr_ex cq_attr{};
        cq_attr.cqe = std::uint32_t(n_wqe * strides_per_wqe);
        cq_attr.channel = comp_channel;
        cq_attr.comp_vector = comp_channel ? std::uint32_t(config.comp_vector % std::max(1, context->num_comp_vectors)) : 0;
        cq_attr.wc_flags = IBV_WC_EX_WITH_BYTE_LEN;
        cq_attr.comp_mask = IBV_CQ_INIT_ATTR_MASK_FLAGS;
        cq_attr.flags = IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
        cq = ibv_create_cq_ex(context, &cq_attr);
        if (!cq)
            fail_errno(errno, "ibv_create_cq_ex");

        ibv_wq_init_attr wq_attr{};
        wq_attr.wq_type = IBV_WQT_RQ;
        wq_attr.max_wr = std::uint32_t(n_wqe);
        wq_attr.max_sge = 1;
        wq_attr.pd = pd;
        wq_attr.cq = ibv_cq_ex_to_cq(cq);
        mlx5dv_wq_init_attr dv_wq{};
        dv_wq.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
        dv_wq.striding_rq_attrs.single_stride_log_num_of_bytes = std::uint32_t(stride_log);
        dv_wq.striding_rq_attrs.single_wqe_log_num_of_strides = std::uint32_t(strides_log);
        dv_wq.striding_rq_attrs.two_byte_shift_en = 0;
        wq = m->create_wq(context, &wq_attr, &dv_wq);
        if (!wq)
        {
            int err = errno;
            if (err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS || err == EINVAL)
                throw mprq_unsupported(std::string("mlx5dv_create_wq: ") + std::strerror(err));
            fail_errno(err, "mlx5dv_create_wq");
        }
        mlx5dv_obj obj{};
        obj.rwq.in = wq;
        obj.rwq.out = &rwq;
        if (m->init_obj(&obj, MLX5DV_OBJ_RWQ) != 0)
            fail_errno(errno, "mlx5dv_init_obj");
        if (rwq.stride != sizeof(mlx5_mprq_wqe))
            throw mprq_unsupported("unexpected multi-packet WQE layout");

        ibv_rwq_ind_table_init_attr ind_attr{};
        ind_attr.log_ind_tbl_size = 0;
        ind_attr.ind_tbl = &wq;
        ind_table = ibv_create_rwq_ind_table(context, &ind_attr);
        if (!ind_table)
            fail_errno(errno, "ibv_create_rwq_ind_table");

        static std::uint8_t hash_key[40] = {};   // one queue: the hash is irrelevant
        ibv_qp_init_attr_ex qp_attr{};
        qp_attr.qp_type = IBV_QPT_RAW_PACKET;
        qp_attr.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH;
        qp_attr.pd = pd;
        qp_attr.rwq_ind_tbl = ind_table;
        qp_attr.rx_hash_conf.rx_hash_function = IBV_RX_HASH_FUNC_TOEPLITZ;
        qp_attr.rx_hash_conf.rx_hash_key_len = sizeof(hash_key);
        qp_attr.rx_hash_conf.rx_hash_key = hash_key;
        qp_attr.rx_hash_conf.rx_hash_fields_mask = 0;
        // Called through the context's table directly (the inline helper would
        // reference ibv_create_qp, which we must not link against).
        verbs_context *vctx = verbs_get_ctx_op(context, create_qp_ex);
        if (!vctx)
            throw mprq_unsupported("the verbs provider has no create_qp_ex");
        qp = vctx->create_qp_ex(context, &qp_attr);
        if (!qp)
            fail_qp(errno);
        memory = std::make_unique<buffer_memory>(buffer_size);
        mr = ibv::verbs().reg_mr(pd, memory->data(), buffer_size, IBV_ACCESS_LOCAL_WRITE);
        if (!mr)
            fail_errno(errno, "ibv_reg_mr (registering " + std::to_string(buffer_size) + " bytes)");
        create_flows(qp);
    }
    catch (...)
    {
        release();
        throw;
    }
}

void mprq_reader::release()
{
    if (closed)
        return;
    // Dependants first: flows, QP, indirection table, WQ, CQ, then memory.
    const auto &v = ibv::verbs();
    destroy_flows();
    destroy(qp, v.destroy_qp);
    destroy(ind_table, ibv_destroy_rwq_ind_table);
    destroy(wq, ibv_destroy_wq);
    if (cq)
        v.destroy_cq(ibv_cq_ex_to_cq(cq));
    cq = nullptr;
    destroy(mr, v.dereg_mr);
    memory.reset();
    close_common();
}

void mprq_reader::post_wqe(std::size_t index)
{
    auto *wqes = static_cast<mlx5_mprq_wqe *>(rwq.buf);
    mlx5_mprq_wqe &w = wqes[post_head & (rwq.wqe_cnt - 1)];
    std::memset(&w.nseg, 0, sizeof(w.nseg));
    w.dseg.byte_count = htobe32(std::uint32_t(wqe_size));
    w.dseg.lkey = htobe32(mr->lkey);
    w.dseg.addr = htobe64(std::uint64_t(reinterpret_cast<std::uintptr_t>(memory->data() + index * wqe_size)));
    post_head++;
    // The NIC must see the WQE before the doorbell record moves.
    std::atomic_thread_fence(std::memory_order_release);
    __atomic_store_n(&rwq.dbrec[MLX5_RCV_DBR], htobe32(post_head & 0xffff), __ATOMIC_RELEASE);
}

void mprq_reader::start()
{
    ibv_wq_attr attr{};
    attr.attr_mask = IBV_WQ_ATTR_STATE;
    attr.wq_state = IBV_WQS_RDY;
    if (ibv_modify_wq(wq, &attr) != 0)
        fail_errno(errno, "ibv_modify_wq (to ready)");
    for (std::size_t i = 0; i < n_wqe; i++)
        post_wqe(i);
    join_groups();
    start_polling();
}

bool mprq_reader::poll_once(batch &b, bool &partial)
{
    ibv_poll_cq_attr attr{};
    if (ibv_start_poll(cq, &attr) != 0)
        return true;   // nothing completed
    std::size_t bad = 0;
    std::vector<std::size_t> finished;
    bool running = true;
    int n = 0;
    do
    {
        const std::uint32_t byte_len = ibv_wc_read_byte_len(cq);
        const std::size_t strides = (byte_len >> 16) & 0x7fff;
        const bool filler = byte_len >> 31;
        const std::size_t length = byte_len & 0xffff;
        if (cq->status != IBV_WC_SUCCESS)
            log_warning("ibverbs completion failed with status %d", int(cq->status));
        else if (!filler && running)
        {
            const std::uint8_t *frame = memory->data() + current_wqe * wqe_size + strides_used * stride_size;
            running = deliver(b, frame, length, bad);
        }
        strides_used += strides;
        if (strides_used >= strides_per_wqe)
        {
            finished.push_back(current_wqe);
            current_wqe = (current_wqe + 1) % n_wqe;
            strides_used = 0;
        }
        n++;
    } while (n < MAX_CQES_PER_POLL && ibv_next_poll(cq) == 0);
    ibv_end_poll(cq);
    partial = n == MAX_CQES_PER_POLL;
    // Every frame in these work requests has been handled: give them back.
    for (std::size_t w : finished)
        post_wqe(w);
    if (bad)
        b.malformed(bad);
    return running;
}

// ---------------------------------------------------------------- plain reader

class plain_reader : public ibv_reader_base
{
    ibv_cq *recv_cq = nullptr, *send_cq = nullptr;
    ibv_qp *qp = nullptr;
    ibv_mr *mr = nullptr;
    std::unique_ptr<buffer_memory> memory;
    std::size_t slot_size = 0, n_slots = 0;
    std::vector<ibv_recv_wr> wrs;
    std::vector<ibv_sge> sges;
    std::vector<ibv_wc> wcs;
    void release();
    void post(const std::size_t *slots, std::size_t n);
protected:
    bool poll_once(batch &b, bool &partial) override;
    ibv_cq *notify_cq() override { return recv_cq; }
public:
    plain_reader(packet_sink &sink, worker &thread, const ibv_config &config);
    ~plain_reader() override { release(); }
    void start() override;
    void close() override { release(); }
};

plain_reader::plain_reader(packet_sink &sink, worker &thread, const ibv_config &cfg)
    : ibv_reader_base(sink, thread, cfg)
{
    try
    {
        const auto &v = ibv::verbs();
        if (!(device_attr.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING))
            throw std::invalid_argument("This device does not support flow steering");
        slot_size = config.max_size + FRAME_OVERHEAD;
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
        const int vector = comp_channel ? config.comp_vector % std::max(1, context->num_comp_vectors) : 0;
        recv_cq = v.create_cq(context, int(n_slots), nullptr, comp_channel, vector);
        if (!recv_cq)
            fail_errno(errno, "ibv_create_cq");
        send_cq = v.create_cq(context, 1, nullptr, nullptr, 0);
        if (!send_cq)
            fail_errno(errno, "ibv_create_cq");
        ibv_qp_init_attr qp_attr{};
        qp_attr.send_cq = send_cq;
        qp_attr.recv_cq = recv_cq;
        qp_attr.qp_type = IBV_QPT_RAW_PACKET;
        qp_attr.cap.max_send_wr = 1;
        qp_attr.cap.max_recv_wr = std::uint32_t(n_slots);
        qp_attr.cap.max_send_sge = 1;
        qp_attr.cap.max_recv_sge = 1;
        qp = v.create_qp(pd, &qp_attr);
        if (!qp)
            fail_qp(errno);
        ibv_qp_attr attr{};
        attr.qp_state = IBV_QPS_INIT;
        attr.port_num = cm_id->port_num;
        if (v.modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_PORT) != 0)
            fail_errno(errno, "ibv_modify_qp (to INIT)");
        memory = std::make_unique<buffer_memory>(n_slots * slot_size);
        mr = v.reg_mr(pd, memory->data(), n_slots * slot_size, IBV_ACCESS_LOCAL_WRITE);
        if (!mr)
            fail_errno(errno, "ibv_reg_mr");
        wrs.resize(n_slots);
        sges.resize(n_slots);
        wcs.resize(std::min<std::size_t>(n_slots, MAX_CQES_PER_POLL));
        std::vector<std::size_t> all(n_slots);
        for (std::size_t i = 0; i < n_slots; i++)
            all[i] = i;
        for (std::size_t i = 0; i < n_slots; i += REPOST_CHAIN_MAX)
            post(all.data() + i, std::min(REPOST_CHAIN_MAX, n_slots - i));
        create_flows(qp);
    }
    catch (...)
    {
        release();
        throw;
    }
}

void plain_reader::release()
{
    if (closed)
        return;
    const auto &v = ibv::verbs();
    destroy_flows();
    destroy(qp, v.destroy_qp);
    destroy(recv_cq, v.destroy_cq);
    destroy(send_cq, v.destroy_cq);
    destroy(mr, v.dereg_mr);
    memory.reset();
    close_common();
}

void plain_reader::post(const std::size_t *slots, std::size_t n)
{
    for (std::size_t i = 0; i < n; i++)
    {
        const std::size_t s = slots[i];
        sges[s].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(memory->data() + s * slot_size));
        sges[s].length = std::uint32_t(slot_size);
        sges[s].lkey = mr->lkey;
        wrs[s].wr_id = s;
        wrs[s].sg_list = &sges[s];
        wrs[s].num_sge = 1;
        wrs[s].next = i + 1 < n ? &wrs[slots[i + 1]] : nullptr;
    }
    ibv_recv_wr *bad = nullptr;
    if (n && ibv_post_recv(qp, &wrs[slots[0]], &bad) != 0)
        log_warning("ibv_post_recv failed: %s", std::strerror(errno));
}

void plain_reader::start()
{
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_RTR;
    if (ibv::verbs().modify_qp(qp, &attr, IBV_QP_STATE) != 0)
        fail_errno(errno, "ibv_modify_qp (to RTR)");
    join_groups();
    start_polling();
}

bool plain_reader::poll_once(batch &b, bool &partial)
{
    int n = ibv_poll_cq(recv_cq, int(wcs.size()), wcs.data());
    if (n < 0)
    {
        log_warning("ibv_poll_cq failed");
        return true;
    }
    partial = std::size_t(n) == wcs.size();
    std::size_t bad = 0;
    bool running = true;
    std::size_t repost[REPOST_CHAIN_MAX];
    std::size_t n_repost = 0;
    for (int i = 0; i < n; i++)
    {
        const std::size_t slot = std::size_t(wcs[i].wr_id);
        if (wcs[i].status != IBV_WC_SUCCESS)
            log_warning("ibverbs completion failed with status %d", int(wcs[i].status));
        else if (running)
            running = deliver(b, memory->data() + slot * slot_size, wcs[i].byte_len, bad);
        repost[n_repost++] = slot;
        if (n_repost == REPOST_CHAIN_MAX)
        {
            post(repost, n_repost);
            n_repost = 0;
        }
    }
    post(repost, n_repost);
    if (bad)
        b.malformed(bad);
    return running;
}

} // anonymous namespace

// ------------------------------------------------------------------ public

void ibv_config::validate() const
{
    if (endpoints.empty())
        throw std::invalid_argument("endpoints is empty");
    if (interface_address.empty())
        throw std::invalid_argument("interface address must be specified");
    in_addr iface = resolve_ipv4(interface_address, "interface address");
    if (iface.s_addr == htonl(INADDR_ANY))
        throw std::invalid_argument("interface address must not be the unspecified address (0.0.0.0)");
    for (const auto &ep : endpoints)
        if (!ep.first.empty())
            resolve_ipv4(ep.first, "endpoint");   // throws "endpoint ... is not an IPv4 address"
    if (max_size < 1)
        throw std::invalid_argument("max_size must be positive");
    if (max_poll < 1)
        throw std::invalid_argument("max_poll must be at least 1");
}

std::shared_ptr<reader> make_ibv_reader(packet_sink &sink, worker &thread, const ibv_config &config)
{
    config.validate();
    try
    {
        return std::make_shared<mprq_reader>(sink, thread, config);
    }
    catch (mprq_unsupported &e)
    {
        log_debug("multi-packet receive queue unavailable (%s); using one work request per packet", e.what());
    }
    return std::make_shared<plain_reader>(sink, thread, config);
}

const char *ibv_reader_kind(const reader &r)
{
    if (dynamic_cast<const mprq_reader *>(&r))
        return "mprq";
    if (dynamic_cast<const plain_reader *>(&r))
        return "plain";
    return "other";
}

std::optional<ibv_config> ibv_override(const std::string &host, std::uint16_t port,
                                       std::size_t max_size, std::size_t buffer_size,
                                       const std::string &explicit_interface)
{
    const char *env = std::getenv("SPEAD2_IBV_INTERFACE");
    if (!env)
        return std::nullopt;
    ibv_config c;
    c.interface_address = explicit_interface.empty() || explicit_interface == "0.0.0.0" ? env : explicit_interface;
    try
    {
        resolve_ipv4(c.interface_address, "SPEAD2_IBV_INTERFACE");
    }
    catch (std::invalid_argument &e)
    {
        log_warning("ignoring SPEAD2_IBV_INTERFACE: %s", e.what());
        return std::nullopt;
    }
    c.endpoints.emplace_back(host, port);
    c.max_size = max_size;
    if (buffer_size)
        c.buffer_size = buffer_size;
    if (const char *vec = std::getenv("SPEAD2_IBV_COMP_VECTOR"))
    {
        char *end = nullptr;
        long v = std::strtol(vec, &end, 10);
        if (end && *end == '\0' && end != vec)
            c.comp_vector = int(v);
        else
            log_warning("ignoring SPEAD2_IBV_COMP_VECTOR=%s: not an integer", vec);
    }
    return c;
}

} // namespace spead2::transport
