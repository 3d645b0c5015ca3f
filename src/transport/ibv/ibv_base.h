// The part the two ibverbs readers share (see ibv_reader.h for the overview):
// the device, protection domain and completion channel; the receive memory;
// the flow-steering rules; the multicast subscription; and the base reader,
// which drives polling, error completions, queue recovery and asynchronous
// device events.  The receive queue itself is the derived reader's
// (ibv_mprq.h, ibv_plain.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <netinet/in.h>

#include "transport/ibv/ibv_handles.h"
#include "transport/ibv/ibv_reader.h"
#include "transport/reader.h"

namespace spead2::transport::ibv_detail
{

// Ethernet + IPv4 + UDP headers in front of each payload (no VLAN, no IP options).
constexpr std::size_t FRAME_OVERHEAD = 14 + 20 + 8;
// Completions handled per poll pass before yielding.
constexpr int MAX_CQES_PER_POLL = 256;
// Bytes of one completion queue entry on mlx5 (the CQ buffer the library
// allocates and the kernel pins holds one per entry).
constexpr std::size_t CQE_BYTES = 64;

/// Thrown when a device lacks multi-packet receive: fall back to the plain reader.
struct mprq_unsupported : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_errno(int err, const std::string &what);
/// Creating a raw packet QP failed: say whether CAP_NET_RAW is the likely cause.
[[noreturn]] void fail_qp(int err);
/// A call that pins memory failed: ENOMEM usually means the memlock limit.
/// @a who names what pins in the message ("reader (receive buffer and completion queue)").
[[noreturn]] void fail_pinning(int err, const std::string &what, std::size_t need,
                               const char *who = "reader (receive buffer and completion queue)");
/// Throw a clear error if pinning @a need more bytes would exceed RLIMIT_MEMLOCK.
void check_memlock(std::size_t need, const char *what = "reader (receive buffer and completion queue)");
/// @a bytes rounded up to whole pages.
std::size_t page_round(std::size_t bytes);

/// Receive memory, on huge pages where the system has them, MADV_DONTFORK.
class buffer_memory
{
    void *ptr;
    std::size_t length = 0;
public:
    explicit buffer_memory(std::size_t size);
    buffer_memory(const buffer_memory &) = delete;
    buffer_memory &operator=(const buffer_memory &) = delete;
    ~buffer_memory();
    std::uint8_t *data() const { return static_cast<std::uint8_t *>(ptr); }
};

/// The device objects every ibverbs queue needs: declared in creation
/// order, so destroyed in reverse (see ibv_handles.h).  The readers and the
/// sender open them the same way (open_interface).
struct device_handles
{
    event_channel_handle event_channel;
    cm_id_handle cm_id;          ///< owns the device context
    pd_handle pd;
    comp_channel_handle comp_channel;   ///< only when asked for
    // Borrowed from the above.
    ibv_context *context = nullptr;
    std::uint8_t port_num = 0;
    ibv_device_attr device_attr{};
};

/// Find the RDMA device that owns @a interface (rdma_bind_addr), query it,
/// allocate a protection domain and, if @a with_channel, a non-blocking
/// completion channel.  @a interface_text names the address in errors.
/// On failure what was made so far is released by @a d's destructor.
void open_interface(device_handles &d, in_addr interface, const std::string &interface_text, bool with_channel);

/// Name of a work completion status, for error messages (the library's
/// ibv_wc_status_str is not loaded: a number alone is no help to a user).
const char *wc_status_name(ibv_wc_status status);

/// MAC address of the local interface that has IPv4 address @a addr
/// (from the kernel: getifaddrs); false if there is none.
bool interface_mac(in_addr addr, std::uint8_t mac[6]);

/// Register receive memory for local writes (relaxed ordering where offered).
ibv_mr *register_memory(ibv_pd *pd, void *addr, std::size_t length);

/// ibv_create_flow through whichever slot the library fills (current or pre-v13 ABI).
ibv_flow *create_flow_any_abi(ibv_qp *qp, ibv_flow_attr *attr);

class ibv_reader_base : public reader
{
private:
    /// Objects every reader needs before its receive queue.
    std::optional<device_handles> device;
    fd_handle join_socket;       ///< holds the multicast memberships
    fd_handle async_fd;          ///< our duplicate of the context's async event fd
    std::vector<in_addr> groups;
    bool registered = false;
    bool async_registered = false;

    static void dispatch_async_event(ibv_context *context, const ibv_async_event &event);
    void drain_async_events();
    void on_async_event(ibv_event_type type);
    void handle(bool from_channel);
    void run_recovery();
    void stop_with_failure();
    void schedule_poll();

protected:
    ibv_config config;
    in_addr interface{};
    // Borrowed from device (null once closed).
    ibv_context *context = nullptr;
    ibv_pd *pd = nullptr;
    ibv_comp_channel *comp_channel = nullptr;
    std::uint8_t port_num = 0;
    ibv_device_attr device_attr{};
    bool closed = false;
    // Error handling (all on the worker).
    std::shared_ptr<ibv_reader_stats> stats = std::make_shared<ibv_reader_stats>();
    bool need_recovery = false;        ///< the receive queue is in the error state
    std::string failure;               ///< non-empty: stop the stream with this error
    bool failed = false;
    unsigned consecutive_recoveries = 0;

    ibv_reader_base(packet_sink &sink, worker &thread, const ibv_config &config);
    /// One rule per endpoint steering its frames to @a qp.  Records the
    /// multicast groups for join_groups.
    flow_set create_flows(ibv_qp *qp);
    void join_groups();
    /// Release what the base owns (after the derived reader released its queue).
    void close_common();
    /// Parse one frame into the batch; counts it in @a bad if malformed.
    bool deliver(batch &b, const std::uint8_t *frame, std::size_t length, std::size_t &bad);
    void error_completion(int status);
    /// Start watching the completion channel and async events, and poll.
    void start_polling();

    /// One pass over the completion queue; returns false if the stream stopped.
    /// Sets @a partial when the pass hit MAX_CQES_PER_POLL.
    virtual bool poll_once(batch &b, bool &partial) = 0;
    virtual ibv_cq *notify_cq() = 0;
    /// Reset the receive queue from the error state and re-post every buffer
    /// (throws on failure).
    virtual void recover() = 0;
    /// The verbs objects asynchronous events may name.
    virtual std::vector<const void *> event_objects() const = 0;

    void on_stop_requested() override;
public:
    ~ibv_reader_base() override;
    std::shared_ptr<const ibv_reader_stats> get_stats() const { return stats; }
};

} // namespace spead2::transport::ibv_detail
