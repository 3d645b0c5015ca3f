// The shared part of the ibverbs readers (see ibv_base.h).
#include "transport/ibv/ibv_base.h"

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
#include <linux/capability.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/logging.h"
#include "common/socket_util.h"
#include "common/thread_pool.h"
#include "protocol/frame.h"

namespace spead2::transport::ibv_detail
{

namespace
{

constexpr std::size_t HUGE_PAGE_SIZE = 2 * 1024 * 1024;
// A queue that keeps failing is given up after this many resets in a row
// with no packet received in between.
constexpr unsigned MAX_CONSECUTIVE_RECOVERIES = 8;

} // anonymous namespace

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

namespace
{

bool is_multicast(in_addr a) { return IN_MULTICAST(ntohl(a.s_addr)); }

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

std::string memlock_advice(std::size_t need, rlim_t limit, const char *what)
{
    const auto mib = [](double b) { return std::to_string(int(b / (1024 * 1024) + 0.999)); };
    std::string text = std::string("the ibverbs ") + what + " must lock " + mib(double(need))
                       + " MiB of memory, more than the locked-memory limit (RLIMIT_MEMLOCK) of ";
    text += limit == RLIM_INFINITY ? std::string("unlimited") : std::to_string(limit / 1024) + " KiB";
    text += " allows. Raise the limit: `ulimit -l unlimited` in the shell (hard limit permitting), "
            "LimitMEMLOCK=infinity in a systemd unit, a memlock line in /etc/security/limits.conf, "
            "or `--ulimit memlock=-1` for a container; or give the process CAP_IPC_LOCK; "
            "or use a smaller buffer_size";
    return text;
}

/// The packed flow rule: attributes followed by three specs.
struct flow_rule
{
    ibv_flow_attr attr;
    ibv_flow_spec_eth eth;
    ibv_flow_spec_ipv4 ip;
    ibv_flow_spec_tcp_udp udp;
} __attribute__((packed));

// Libraries older than the v13 ABI keep the flow verbs in the verbs_context
// slots the current headers call ABI_placeholder1 (create) and
// ABI_placeholder2 (destroy); the inline helper then fails with EOPNOTSUPP.
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

} // anonymous namespace

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

std::size_t page_round(std::size_t bytes)
{
    const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    return (bytes + page - 1) / page * page;
}

/// Registering memory and creating queues pin memory, charged against
/// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK; the kernel then fails
/// with a bare ENOMEM.  Check up front and say what to do.
void check_memlock(std::size_t need, const char *what)
{
    rlimit lim{};
    if (getrlimit(RLIMIT_MEMLOCK, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY || have_cap_ipc_lock())
        return;
    const std::size_t pinned = pinned_already();
    if (pinned + need > lim.rlim_cur)
        throw std::runtime_error(memlock_advice(need, lim.rlim_cur, what));
}

/// Failure of a call that pins memory: ENOMEM usually means the memlock limit.
[[noreturn]] void fail_pinning(int err, const std::string &what, std::size_t need, const char *who)
{
    if (err == ENOMEM && !have_cap_ipc_lock())
    {
        rlimit lim{};
        getrlimit(RLIMIT_MEMLOCK, &lim);
        throw std::runtime_error(what + " failed (" + std::strerror(err) + "): probably " + memlock_advice(need, lim.rlim_cur, who));
    }
    fail_errno(err, what);
}

namespace
{

std::size_t default_huge_page_size()
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

} // anonymous namespace

buffer_memory::buffer_memory(std::size_t size)
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

buffer_memory::~buffer_memory()
{
    munmap(ptr, length);
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

void open_interface(device_handles &d, in_addr interface, const std::string &interface_text, bool with_channel)
{
    const auto &cm = ibv::rdmacm();
    const auto &v = ibv::verbs();
    d.event_channel.reset(cm.create_event_channel());
    if (!d.event_channel)
        fail_errno(errno, "rdma_create_event_channel");
    rdma_cm_id *id = nullptr;
    if (cm.create_id(d.event_channel.get(), &id, nullptr, RDMA_PS_UDP) != 0)
        fail_errno(errno, "rdma_create_id");
    d.cm_id.reset(id);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr = interface;
    if (cm.bind_addr(id, reinterpret_cast<sockaddr *>(&sa)) != 0 || !id->verbs)
    {
        int err = errno;
        throw std::runtime_error("no RDMA device owns the interface address " + interface_text
                                 + " (rdma_bind_addr: " + std::strerror(err)
                                 + "); check that the NIC's RDMA driver is loaded (ibv_devices, rdma link)");
    }
    d.context = id->verbs;
    d.port_num = id->port_num;
    if (v.query_device(d.context, &d.device_attr) != 0)
        fail_errno(errno, "ibv_query_device");
    d.pd.reset(v.alloc_pd(d.context));
    if (!d.pd)
        fail_errno(errno, "ibv_alloc_pd");
    if (with_channel)
    {
        d.comp_channel.reset(v.create_comp_channel(d.context));
        if (!d.comp_channel)
            fail_errno(errno, "ibv_create_comp_channel");
        int flags = fcntl(d.comp_channel->fd, F_GETFL);
        if (flags < 0 || fcntl(d.comp_channel->fd, F_SETFL, flags | O_NONBLOCK) < 0)
            fail_errno(errno, "making the completion channel non-blocking");
    }
}

// ---------------------------------------------------------------- reader base

void ibv_reader_base::dispatch_async_event(ibv_context *context, const ibv_async_event &event)
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
    interface = resolve_ipv4(config.interface_address, "interface address");
    // If anything below throws, device (a member) is destroyed, in reverse
    // declaration order, releasing what was made so far.
    device_handles &d = device.emplace();
    open_interface(d, interface, config.interface_address, config.comp_vector >= 0);
    context = d.context;
    port_num = d.port_num;
    device_attr = d.device_attr;
    pd = d.pd.get();
    comp_channel = d.comp_channel.get();
}

ibv_reader_base::~ibv_reader_base()
{
    // The derived reader's queue (its members) is gone by now.
    close_common();
}

flow_set ibv_reader_base::create_flows(ibv_qp *qp)
{
    flow_set flows;
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
        rule.attr.port = port_num;
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
                protocol::multicast_mac(rule.eth.val.dst_mac, ntohl(addr.s_addr));
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
        void *raw = &rule;   // packed, but its start is aligned for ibv_flow_attr
        ibv_flow *flow = create_flow_any_abi(qp, static_cast<ibv_flow_attr *>(raw));
        if (!flow)
        {
            int err = errno;
            throw std::runtime_error("could not create a flow-steering rule for " + host + ":"
                                     + std::to_string(port) + " (" + std::strerror(err)
                                     + "): the device or its firmware may not support flow steering");
        }
        flows.add(flow);
    }
    return flows;
}

void ibv_reader_base::join_groups()
{
    if (groups.empty())
        return;
    join_socket.reset(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!join_socket)
        fail_errno(errno, "socket for multicast subscription");
    int one = 1;
    setsockopt(join_socket.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    for (in_addr g : groups)
    {
        ip_mreq mreq{};
        mreq.imr_multiaddr = g;
        mreq.imr_interface = interface;
        if (setsockopt(join_socket.get(), IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0)
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
    async_fd.reset();
    join_socket.reset();
    context = nullptr;
    pd = nullptr;
    comp_channel = nullptr;
    device.reset();   // comp channel, PD, cm id (and with it the context), event channel
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
    async_fd.reset(fcntl(context->async_fd, F_DUPFD_CLOEXEC, 0));
    if (async_fd)
    {
        int flags = fcntl(async_fd.get(), F_GETFL);
        if (flags < 0 || fcntl(async_fd.get(), F_SETFL, flags | O_NONBLOCK) < 0)
            async_fd.reset();
    }
    if (!async_fd)
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
        if (self->async_fd)
        {
            self->thread.add_fd(self->async_fd.get(), [self] { self->drain_async_events(); });
            self->async_registered = true;
        }
        self->handle(false);
    });
}

void ibv_reader_base::drain_async_events()
{
    if (stopping.load() || !async_fd)
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
                    int(port_num), config.interface_address.c_str());
        return;
    case IBV_EVENT_PORT_ACTIVE:
        log_info("ibverbs: the link of port %d on %s is up", int(port_num),
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
            self->thread.remove_fd(self->async_fd.get());
            self->async_registered = false;
        }
    });
}

} // namespace spead2::transport::ibv_detail
