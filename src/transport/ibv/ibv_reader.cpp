#include "transport/ibv/ibv_reader.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <system_error>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
// Plain reader slots also leave room for one 802.1Q tag, and start on a
// cache line (64 bytes) so the NIC's writes do not straddle lines.
constexpr std::size_t VLAN_TAG_SIZE = 4;
constexpr std::size_t SLOT_ALIGN = 64;
// MPRQ geometry, as in the reference: 64-byte strides, 1 MiB per work request.
constexpr int MPRQ_STRIDE_LOG = 6;
constexpr int MPRQ_WQE_LOG = 20;
// Completions handled per poll pass before yielding.
constexpr int MAX_CQES_PER_POLL = 256;
// Plain reader: receive work requests are re-posted in chains of this many.
constexpr std::size_t REPOST_CHAIN_MAX = 64;
constexpr std::size_t HUGE_PAGE_SIZE = 2 * 1024 * 1024;
// A queue that keeps failing is given up after this many resets in a row
// with no packet received in between.
constexpr unsigned MAX_CONSECUTIVE_RECOVERIES = 8;

/// Names of completion statuses a receive queue can report (the library's
/// ibv_wc_status_str is not loaded: a number alone is no help to a user).
const char *wc_status_name(ibv_wc_status status)
{
    switch (status)
    {
    case IBV_WC_SUCCESS: return "success";
    case IBV_WC_LOC_LEN_ERR: return "local length error";
    case IBV_WC_LOC_QP_OP_ERR: return "local QP operation error";
    case IBV_WC_LOC_PROT_ERR: return "local protection error";
    case IBV_WC_WR_FLUSH_ERR: return "work request flushed";
    case IBV_WC_LOC_ACCESS_ERR: return "local access error";
    case IBV_WC_FATAL_ERR: return "fatal error";
    case IBV_WC_GENERAL_ERR: return "general error";
    default: return "error";
    }
}

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

// Bytes of one completion queue entry on mlx5 (the CQ buffer the library
// allocates and the kernel pins holds one per entry).
constexpr std::size_t CQE_BYTES = 64;

std::size_t page_round(std::size_t bytes)
{
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
}

bool have_cap_ipc_lock()
{
    __user_cap_header_struct header{};
    __user_cap_data_struct data[2]{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    header.pid = 0;
    if (syscall(SYS_capget, &header, data) != 0)
        return false;
    return data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK);
}

/// Memory this process has pinned already (VmPin), in bytes.
std::size_t pinned_already()
{
    FILE *f = std::fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kib = 0;
    while (std::fgets(line, sizeof(line), f))
        if (std::sscanf(line, "VmPin: %llu kB", &kib) == 1)
            break;
    std::fclose(f);
    return std::size_t(kib) * 1024;
}

std::string memlock_advice(std::size_t need, rlim_t limit)
{
    const auto mib = [](double b) { return std::to_string(int(b / (1024 * 1024) + 0.999)); };
    std::string text = "the ibverbs reader must lock " + mib(double(need)) + " MiB of memory (receive buffer "
                       "and completion queue), more than the locked-memory limit (RLIMIT_MEMLOCK) of ";
    text += limit == RLIM_INFINITY ? std::string("unlimited") : std::to_string(limit / 1024) + " KiB";
    text += " allows. Raise the limit: `ulimit -l unlimited` in the shell (hard limit permitting), "
            "LimitMEMLOCK=infinity in a systemd unit, a memlock line in /etc/security/limits.conf, "
            "or `--ulimit memlock=-1` for a container; or give the process CAP_IPC_LOCK; "
            "or use a smaller buffer_size";
    return text;
}

/// Registering memory and creating queues pin memory, charged against
/// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK; the kernel then fails
/// with a bare ENOMEM.  Check up front and say what to do.
void check_memlock(std::size_t need)
{
    rlimit lim{};
    if (getrlimit(RLIMIT_MEMLOCK, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY || have_cap_ipc_lock())
        return;
    const std::size_t pinned = pinned_already();
    if (pinned + need > lim.rlim_cur)
        throw std::runtime_error(memlock_advice(need, lim.rlim_cur));
}

/// Failure of a call that pins memory: ENOMEM usually means the memlock limit.
[[noreturn]] void fail_pinning(int err, const std::string &what, std::size_t need)
{
    if (err == ENOMEM && !have_cap_ipc_lock())
    {
        rlimit lim{};
        getrlimit(RLIMIT_MEMLOCK, &lim);
        throw std::runtime_error(what + " failed (" + std::strerror(err) + "): probably " + memlock_advice(need, lim.rlim_cur));
    }
    fail_errno(err, what);
}

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
        // MAP_HUGETLB uses the default huge page size, which need not be
        // 2 MiB: round to it, and unmap exactly what was mapped.
        const std::size_t huge = default_huge_page_size();
        const std::size_t huge_len = (size + huge - 1) / huge * huge;
        ptr = mmap(nullptr, huge_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        length = huge_len;
        if (ptr == MAP_FAILED)
        {
            length = page_round(size);
            ptr = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (ptr == MAP_FAILED)
                fail_errno(errno, "allocating " + std::to_string(size) + " bytes of receive buffer");
            madvise(ptr, length, MADV_HUGEPAGE);
        }
        // The NIC writes here by DMA: a fork (Python's multiprocessing, a
        // subprocess) must not make these pages copy-on-write, or the NIC
        // would keep writing to pages the parent no longer sees.
        if (madvise(ptr, length, MADV_DONTFORK) != 0)
            log_warning("madvise(MADV_DONTFORK) on the receive buffer failed: %s", std::strerror(errno));
    }
    static std::size_t default_huge_page_size()
    {
        std::size_t kib = 0;
        if (FILE *f = std::fopen("/proc/meminfo", "r"))
        {
            char line[128];
            while (std::fgets(line, sizeof(line), f))
                if (std::sscanf(line, "Hugepagesize: %zu kB", &kib) == 1)
                    break;
            std::fclose(f);
        }
        return kib ? kib * 1024 : HUGE_PAGE_SIZE;
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

/// Register receive memory for local writes, with relaxed PCIe ordering where
/// the library can ask for it (ibv_reg_mr_iova2; the flag is optional, so a
/// device without it simply ignores it).
ibv_mr *register_memory(ibv_pd *pd, void *addr, std::size_t length)
{
    const auto &v = ibv::verbs();
    if (v.reg_mr_iova2)
        return v.reg_mr_iova2(pd, addr, length, std::uint64_t(reinterpret_cast<std::uintptr_t>(addr)),
                              IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_RELAXED_ORDERING);
    return v.reg_mr(pd, addr, length, IBV_ACCESS_LOCAL_WRITE);
}

/// The packed flow rule: attributes followed by three specs.
struct flow_rule
{
    ibv_flow_attr attr;
    ibv_flow_spec_eth eth;
    ibv_flow_spec_ipv4 ip;
    ibv_flow_spec_tcp_udp udp;
} __attribute__((packed));

/// ibv_create_flow through whichever slot the library fills.  Libraries
/// older than the v13 ABI keep the flow verbs in the verbs_context slots the
/// current headers call ABI_placeholder1 (create) and ABI_placeholder2
/// (destroy); the inline helper then fails with EOPNOTSUPP.
using create_flow_fn = ibv_flow *(*)(ibv_qp *, ibv_flow_attr *);
using destroy_flow_fn = int (*)(ibv_flow *);

template<typename F>
F legacy_slot(ibv_context *context, void (*verbs_context::*slot)(void), std::size_t offset)
{
    verbs_context *v = verbs_get_ctx(context);
    // The slot exists only if the provider's verbs_context reaches back to it.
    if (!v || v->sz < sizeof(*v) - offset || !(v->*slot))
        return nullptr;
    return reinterpret_cast<F>(v->*slot);
}

ibv_flow *create_flow_any_abi(ibv_qp *qp, ibv_flow_attr *attr)
{
    if (verbs_get_ctx_op(qp->context, ibv_create_flow))
        return ibv_create_flow(qp, attr);
    if (auto fn = legacy_slot<create_flow_fn>(qp->context, &verbs_context::ABI_placeholder1,
                                              offsetof(verbs_context, ABI_placeholder1)))
        return fn(qp, attr);
    errno = EOPNOTSUPP;
    return nullptr;
}

int destroy_flow_any_abi(ibv_flow *flow)
{
    if (verbs_get_ctx_op(flow->context, ibv_destroy_flow))
        return ibv_destroy_flow(flow);
    if (auto fn = legacy_slot<destroy_flow_fn>(flow->context, &verbs_context::ABI_placeholder2,
                                               offsetof(verbs_context, ABI_placeholder2)))
        return fn(flow);
    return EOPNOTSUPP;
}

// ---------------------------------------------------------------- reader base

class ibv_reader_base;

/// Asynchronous events arrive on the device context's one event fd, which
/// every reader on that context watches; whoever reads an event hands it to
/// the reader that owns the object it names.
struct async_owner
{
    const ibv_reader_base *key;
    ibv_context *context;
    std::vector<const void *> objects;   ///< CQ, WQ, QP of the reader
    std::weak_ptr<ibv_reader_base> owner;
};
std::mutex async_owners_mutex;
std::vector<async_owner> async_owners;

void dispatch_async_event(ibv_context *context, const ibv_async_event &event);

class ibv_reader_base : public reader
{
    friend void dispatch_async_event(ibv_context *context, const ibv_async_event &event);
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
    int async_fd = -1;                 ///< our duplicate of the context's async event fd
    bool registered = false;
    bool async_registered = false;
    bool closed = false;
    // Error handling (all on the worker).
    std::shared_ptr<ibv_reader_stats> stats = std::make_shared<ibv_reader_stats>();
    bool need_recovery = false;        ///< the receive queue is in the error state
    std::string failure;               ///< non-empty: stop the stream with this error
    bool failed = false;
    unsigned consecutive_recoveries = 0;

    ibv_reader_base(packet_sink &sink, worker &thread, const ibv_config &config);
    void create_flows(ibv_qp *qp);
    void destroy_flows();
    void join_groups();
    void close_common();
    /// One pass over the completion queue; returns false if the stream stopped.
    /// Sets @a partial when the pass hit MAX_CQES_PER_POLL.
    virtual bool poll_once(batch &b, bool &partial) = 0;
    virtual ibv_cq *notify_cq() = 0;
    /// Reset the receive queue from the error state and re-post every buffer
    /// (throws on failure).
    virtual void recover() = 0;
    /// The verbs objects asynchronous events may name.
    virtual std::vector<const void *> event_objects() const = 0;
    void error_completion(int status);
    void handle(bool from_channel);
    void run_recovery();
    void stop_with_failure();
    void drain_async_events();
    void on_async_event(ibv_event_type type);
    void schedule_poll();
    bool deliver(batch &b, const std::uint8_t *frame, std::size_t length, std::size_t &bad);
    void on_stop_requested() override;
public:
    ~ibv_reader_base() override;
    void start_polling();
    std::shared_ptr<const ibv_reader_stats> get_stats() const { return stats; }
};

void dispatch_async_event(ibv_context *context, const ibv_async_event &event)
{
    const void *object = nullptr;
    switch (event.event_type)
    {
    case IBV_EVENT_CQ_ERR:
        object = event.element.cq;
        break;
    case IBV_EVENT_WQ_FATAL:
        object = event.element.wq;
        break;
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED:
        object = event.element.qp;
        break;
    case IBV_EVENT_SRQ_ERR:
    case IBV_EVENT_SRQ_LIMIT_REACHED:
        return;   // no SRQs here
    default:
        break;    // port and device events concern every reader on the context
    }
    std::vector<std::shared_ptr<ibv_reader_base>> targets;
    {
        std::lock_guard<std::mutex> lock(async_owners_mutex);
        for (const auto &o : async_owners)
        {
            if (o.context != context)
                continue;
            if (object && std::find(o.objects.begin(), o.objects.end(), object) == o.objects.end())
                continue;
            if (auto p = o.owner.lock())
                targets.push_back(std::move(p));
        }
    }
    const ibv_event_type type = event.event_type;
    for (auto &t : targets)
    {
        auto *raw = t.get();
        raw->thread.post([t = std::move(t), type] { t->on_async_event(type); });
    }
}

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
        ibv_flow *flow = create_flow_any_abi(qp, reinterpret_cast<ibv_flow_attr *>(&rule));
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
        destroy_flow_any_abi(f);
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
    {
        std::lock_guard<std::mutex> lock(async_owners_mutex);
        async_owners.erase(std::remove_if(async_owners.begin(), async_owners.end(),
                                          [this](const async_owner &o) { return o.key == this; }),
                           async_owners.end());
    }
    if (async_fd >= 0)
        ::close(async_fd);
    async_fd = -1;
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
    {
        std::lock_guard<std::mutex> lock(async_owners_mutex);
        async_owners.push_back(async_owner{this, context, event_objects(), self});
    }
    // Our own descriptor for the context's async event fd, so that each
    // reader can register it with its reactor.  Non-blocking: every reader
    // drains what is there and hands each event to its owner.
    async_fd = fcntl(context->async_fd, F_DUPFD_CLOEXEC, 0);
    if (async_fd >= 0)
    {
        int flags = fcntl(async_fd, F_GETFL);
        if (flags < 0 || fcntl(async_fd, F_SETFL, flags | O_NONBLOCK) < 0)
        {
            ::close(async_fd);
            async_fd = -1;
        }
    }
    if (async_fd < 0)
        log_warning("cannot watch the ibverbs asynchronous event fd (%s): fatal queue errors will only "
                    "be noticed through error completions", std::strerror(errno));
    thread.post([self] {
        if (self->stopping.load())
            return;
        if (self->comp_channel)
        {
            int err = ibv_req_notify_cq(self->notify_cq(), 0);
            if (err != 0)
                self->failure = std::string("ibv_req_notify_cq failed: ") + std::strerror(err);
            self->thread.add_fd(self->comp_channel->fd, [self] { self->handle(true); });
            self->registered = true;
        }
        if (self->async_fd >= 0)
        {
            self->thread.add_fd(self->async_fd, [self] { self->drain_async_events(); });
            self->async_registered = true;
        }
        self->handle(false);
    });
}

void ibv_reader_base::drain_async_events()
{
    if (stopping.load() || async_fd < 0)
        return;
    const auto &v = ibv::verbs();
    ibv_async_event event;
    while (v.get_async_event(context, &event) == 0)
    {
        dispatch_async_event(context, event);
        v.ack_async_event(&event);
    }
}

void ibv_reader_base::on_async_event(ibv_event_type type)
{
    if (stopping.load() || failed)
        return;
    stats->async_events++;
    switch (type)
    {
    case IBV_EVENT_CQ_ERR:
        failure = "fatal completion queue error (IBV_EVENT_CQ_ERR): the completion queue overflowed "
                  "or the device failed; the queue cannot be used any more";
        break;
    case IBV_EVENT_DEVICE_FATAL:
        failure = "the RDMA device reported a fatal error (IBV_EVENT_DEVICE_FATAL); "
                  "check the kernel log (dmesg) and the NIC";
        break;
    case IBV_EVENT_WQ_FATAL:
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
        log_warning("ibverbs: the receive queue reported a fatal error (event %d)", int(type));
        need_recovery = true;
        break;
    case IBV_EVENT_PORT_ERR:
        log_warning("ibverbs: the link of port %d on %s went down; no packets arrive until it is back",
                    int(cm_id->port_num), config.interface_address.c_str());
        return;
    case IBV_EVENT_PORT_ACTIVE:
        log_info("ibverbs: the link of port %d on %s is up", int(cm_id->port_num),
                 config.interface_address.c_str());
        return;
    default:
        log_debug("ibverbs: asynchronous event %d", int(type));
        return;
    }
    handle(false);
}

void ibv_reader_base::error_completion(int status)
{
    stats->error_completions++;
    if (status != IBV_WC_WR_FLUSH_ERR)
        log_warning("ibverbs receive completion failed: %s (status %d)",
                    wc_status_name(ibv_wc_status(status)), status);
}

void ibv_reader_base::stop_with_failure()
{
    failed = true;
    {
        std::lock_guard<std::mutex> lock(stats->mutex);
        stats->error = failure;
    }
    stats->failed = true;
    log_error("ibverbs reader on %s stopped the stream: %s", config.interface_address.c_str(), failure.c_str());
}

void ibv_reader_base::run_recovery()
{
    need_recovery = false;
    if (++consecutive_recoveries > MAX_CONSECUTIVE_RECOVERIES)
        failure = "the receive queue entered the error state " + std::to_string(consecutive_recoveries)
                  + " times in a row without receiving a packet; giving up";
    else
    {
        try
        {
            recover();
            stats->recoveries++;
            log_warning("ibverbs: the receive queue was in the error state; reset it and re-posted its "
                        "buffers (packets in flight were lost)");
        }
        catch (std::exception &e)
        {
            failure = std::string("could not recover the receive queue from the error state: ") + e.what();
        }
    }
    if (!failure.empty())
    {
        stop_with_failure();
        batch b(sink);
        if (b.active())
            b.end_of_stream();
        return;
    }
    schedule_poll();
}

void ibv_reader_base::schedule_poll()
{
    auto self = std::static_pointer_cast<ibv_reader_base>(shared_from_this());
    thread.post([self] { self->handle(false); });
}

void ibv_reader_base::handle(bool from_channel)
{
    if (stopping.load() || failed)
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
        for (int i = 0; i < config.max_poll && failure.empty() && !need_recovery; i++)
        {
            bool last = i == config.max_poll - 1;
            if (comp_channel && last)
            {
                // Arm before the final poll: no lost wake-up.
                int err = ibv_req_notify_cq(notify_cq(), 0);
                if (err != 0)
                {
                    failure = std::string("ibv_req_notify_cq failed: ") + std::strerror(err);
                    break;
                }
            }
            bool partial = false;
            if (!poll_once(b, partial))
                return;
            if (partial && last)
                repoll = true;
        }
        if (!failure.empty())
        {
            stop_with_failure();   // first, so the user sees why once the stream ends
            b.end_of_stream();
        }
    }
    if (failed)
        return;
    if (need_recovery)
    {
        run_recovery();
        return;
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
        if (self->async_registered)
        {
            self->thread.remove_fd(self->async_fd);
            self->async_registered = false;
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
    void set_wq_state(ibv_wq_state state, const char *what);
protected:
    bool poll_once(batch &b, bool &partial) override;
    ibv_cq *notify_cq() override { return ibv_cq_ex_to_cq(cq); }
    void recover() override;
    std::vector<const void *> event_objects() const override { return {ibv_cq_ex_to_cq(cq), wq, qp}; }
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

        const std::size_t cqe = n_wqe * strides_per_wqe;
        const std::size_t pinned = page_round(buffer_size) + page_round(cqe * CQE_BYTES)
                                   + page_round(n_wqe * sizeof(mlx5_mprq_wqe));
        check_memlock(pinned);
        ibv_cq_init_attr_ex cq_attr{};
        cq_attr.cqe = std::uint32_t(cqe);
        cq_attr.channel = comp_channel;
        cq_attr.comp_vector = comp_channel ? std::uint32_t(config.comp_vector % std::max(1, context->num_comp_vectors)) : 0;
        cq_attr.wc_flags = IBV_WC_EX_WITH_BYTE_LEN;
        cq_attr.comp_mask = IBV_CQ_INIT_ATTR_MASK_FLAGS;
        cq_attr.flags = IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
        cq = ibv_create_cq_ex(context, &cq_attr);
        if (!cq)
            fail_pinning(errno, "ibv_create_cq_ex", pinned);

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
        mr = register_memory(pd, memory->data(), buffer_size);
        if (!mr)
            fail_pinning(errno, "ibv_reg_mr (registering " + std::to_string(buffer_size) + " bytes)", pinned);
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

void mprq_reader::set_wq_state(ibv_wq_state state, const char *what)
{
    ibv_wq_attr attr{};
    attr.attr_mask = IBV_WQ_ATTR_STATE;
    attr.wq_state = state;
    int err = ibv_modify_wq(wq, &attr);   // returns the error number
    if (err != 0)
        fail_errno(err, std::string("ibv_modify_wq (to ") + what + ")");
}

void mprq_reader::start()
{
    set_wq_state(IBV_WQS_RDY, "ready");
    for (std::size_t i = 0; i < n_wqe; i++)
        post_wqe(i);
    join_groups();
    start_polling();
}

void mprq_reader::recover()
{
    set_wq_state(IBV_WQS_RESET, "reset");
    // Whatever is still in the completion queue describes buffers we are
    // about to hand back: discard it.
    ibv_poll_cq_attr attr{};
    while (ibv_start_poll(cq, &attr) == 0)
    {
        while (ibv_next_poll(cq) == 0)
        {
        }
        ibv_end_poll(cq);
    }
    // RESET -> RDY restarts the doorbell record at 0: post everything anew.
    set_wq_state(IBV_WQS_RDY, "ready");
    post_head = 0;
    current_wqe = 0;
    strides_used = 0;
    for (std::size_t i = 0; i < n_wqe; i++)
        post_wqe(i);
}

bool mprq_reader::poll_once(batch &b, bool &partial)
{
    ibv_poll_cq_attr attr{};
    const int started = ibv_start_poll(cq, &attr);
    if (started == ENOENT)
        return true;   // nothing completed
    if (started != 0)
    {
        failure = std::string("ibv_start_poll failed: ") + std::strerror(started);
        return true;
    }
    std::size_t bad = 0;
    std::vector<std::size_t> finished;
    bool running = true;
    int n = 0;
    do
    {
        if (cq->status != IBV_WC_SUCCESS)
        {
            // byte_len of an error completion is reserved: the strides it
            // used are unknown, so the position in the work request is lost.
            // Any error but a length error also leaves the queue in the error
            // state.  Either way: reset the queue and start afresh.
            error_completion(cq->status);
            need_recovery = true;
            n++;
            break;
        }
        const std::uint32_t byte_len = ibv_wc_read_byte_len(cq);
        const std::size_t strides = (byte_len >> 16) & 0x7fff;
        const bool filler = byte_len >> 31;
        const std::size_t length = byte_len & 0xffff;
        if (!filler)
        {
            consecutive_recoveries = 0;
            if (running)
            {
                const std::uint8_t *frame = memory->data() + current_wqe * wqe_size + strides_used * stride_size;
                running = deliver(b, frame, length, bad);
            }
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
    // Every frame in these work requests has been handled: give them back
    // (unless the queue is about to be reset, which re-posts them all).
    if (!need_recovery)
        for (std::size_t w : finished)
            post_wqe(w);
    if (bad)
        b.malformed(bad);
    return running;
}

// ---------------------------------------------------------------- plain reader

class plain_reader : public ibv_reader_base
{
    ibv_cq *recv_cq = nullptr;
    ibv_qp *qp = nullptr;
    ibv_mr *mr = nullptr;
    std::unique_ptr<buffer_memory> memory;
    std::size_t slot_size = 0, n_slots = 0;
    std::vector<ibv_recv_wr> wrs;
    std::vector<ibv_sge> sges;
    std::vector<ibv_wc> wcs;
    void release();
    int post(const std::size_t *slots, std::size_t n);
    void post_all();
    void set_qp_state(ibv_qp_state state, const char *what);
protected:
    bool poll_once(batch &b, bool &partial) override;
    ibv_cq *notify_cq() override { return recv_cq; }
    void recover() override;
    std::vector<const void *> event_objects() const override { return {recv_cq, qp}; }
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
        recv_cq = v.create_cq(context, int(n_slots), nullptr, comp_channel, vector);
        if (!recv_cq)
            fail_pinning(errno, "ibv_create_cq", pinned);
        // Receive only: no send queue (the QP still needs a send CQ pointer,
        // which nothing will ever complete on).
        ibv_qp_init_attr qp_attr{};
        qp_attr.send_cq = recv_cq;
        qp_attr.recv_cq = recv_cq;
        qp_attr.qp_type = IBV_QPT_RAW_PACKET;
        qp_attr.cap.max_send_wr = 0;
        qp_attr.cap.max_recv_wr = std::uint32_t(n_slots);
        qp_attr.cap.max_send_sge = 0;
        qp_attr.cap.max_recv_sge = 1;
        qp = v.create_qp(pd, &qp_attr);
        if (!qp)
            fail_qp(errno);
        set_qp_state(IBV_QPS_INIT, "INIT");
        memory = std::make_unique<buffer_memory>(n_slots * slot_size);
        mr = register_memory(pd, memory->data(), n_slots * slot_size);
        if (!mr)
            fail_pinning(errno, "ibv_reg_mr", pinned);
        wrs.resize(n_slots);
        sges.resize(n_slots);
        wcs.resize(std::min<std::size_t>(n_slots, MAX_CQES_PER_POLL));
        post_all();
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
    destroy(mr, v.dereg_mr);
    memory.reset();
    close_common();
}

void plain_reader::set_qp_state(ibv_qp_state state, const char *what)
{
    ibv_qp_attr attr{};
    attr.qp_state = state;
    int mask = IBV_QP_STATE;
    if (state == IBV_QPS_INIT)
    {
        attr.port_num = cm_id->port_num;
        mask |= IBV_QP_PORT;
    }
    int err = ibv::verbs().modify_qp(qp, &attr, mask);   // returns the error number
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
    while (ibv_poll_cq(recv_cq, int(wcs.size()), wcs.data()) > 0)
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
        sges[s].addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(memory->data() + s * slot_size));
        sges[s].length = std::uint32_t(slot_size);
        sges[s].lkey = mr->lkey;
        wrs[s].wr_id = s;
        wrs[s].sg_list = &sges[s];
        wrs[s].num_sge = 1;
        wrs[s].next = i + 1 < n ? &wrs[slots[i + 1]] : nullptr;
    }
    ibv_recv_wr *bad = nullptr;
    // ibv_post_recv returns the error number (errno is not set).
    return n ? ibv_post_recv(qp, &wrs[slots[0]], &bad) : 0;
}

void plain_reader::start()
{
    set_qp_state(IBV_QPS_RTR, "RTR");
    join_groups();
    start_polling();
}

bool plain_reader::poll_once(batch &b, bool &partial)
{
    int n = ibv_poll_cq(recv_cq, int(wcs.size()), wcs.data());
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
                running = deliver(b, memory->data() + slot * slot_size, wcs[i].byte_len, bad);
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
    if (bad)
        b.malformed(bad);
    return running;
}

} // anonymous namespace

// ------------------------------------------------------------------ public

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

std::shared_ptr<const ibv_reader_stats> ibv_reader_statistics(const reader &r)
{
    if (auto *p = dynamic_cast<const ibv_reader_base *>(&r))
        return p->get_stats();
    return nullptr;
}

const char *ibv_reader_kind(const reader &r)
{
    if (dynamic_cast<const mprq_reader *>(&r))
        return "mprq";
    if (dynamic_cast<const plain_reader *>(&r))
        return "plain";
    return "other";
}

} // namespace spead2::transport
