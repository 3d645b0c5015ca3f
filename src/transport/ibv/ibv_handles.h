// Owning handles for the verbs objects an ibverbs reader creates.
//
// Each is a std::unique_ptr whose deleter calls the matching destroy verb
// (through the run-time loaded libraries, or the headers' inline helpers).
// A class that holds several declares them in creation order: C++ destroys
// members in reverse declaration order, so the declaration order *is* the
// teardown order, and a dependant (a flow on a QP, a QP on a CQ) always goes
// before what it depends on.  Return values of the destroy verbs are ignored:
// there is nothing useful to do about a failure at teardown.
#pragma once

#include <memory>
#include <vector>

#include <unistd.h>

#include "transport/ibv/loader.h"

namespace spead2::transport::ibv_detail
{

/// ibv_destroy_flow through whichever slot the library fills (current or
/// pre-v13 ABI); see create_flow_any_abi.
int destroy_flow_any_abi(ibv_flow *flow);

struct event_channel_deleter
{
    void operator()(rdma_event_channel *c) const { ibv::rdmacm().destroy_event_channel(c); }
};
struct cm_id_deleter
{
    void operator()(rdma_cm_id *id) const { ibv::rdmacm().destroy_id(id); }
};
struct pd_deleter
{
    void operator()(ibv_pd *pd) const { ibv::verbs().dealloc_pd(pd); }
};
struct comp_channel_deleter
{
    void operator()(ibv_comp_channel *c) const { ibv::verbs().destroy_comp_channel(c); }
};
struct cq_deleter
{
    void operator()(ibv_cq *cq) const { ibv::verbs().destroy_cq(cq); }
};
struct cq_ex_deleter
{
    void operator()(ibv_cq_ex *cq) const { ibv::verbs().destroy_cq(ibv_cq_ex_to_cq(cq)); }
};
struct wq_deleter
{
    void operator()(ibv_wq *wq) const { ibv_destroy_wq(wq); }
};
struct ind_table_deleter
{
    void operator()(ibv_rwq_ind_table *t) const { ibv_destroy_rwq_ind_table(t); }
};
struct qp_deleter
{
    void operator()(ibv_qp *qp) const { ibv::verbs().destroy_qp(qp); }
};
struct mr_deleter
{
    void operator()(ibv_mr *mr) const { ibv::verbs().dereg_mr(mr); }
};
struct flow_deleter
{
    void operator()(ibv_flow *flow) const { destroy_flow_any_abi(flow); }
};

using event_channel_handle = std::unique_ptr<rdma_event_channel, event_channel_deleter>;
using cm_id_handle = std::unique_ptr<rdma_cm_id, cm_id_deleter>;
using pd_handle = std::unique_ptr<ibv_pd, pd_deleter>;
using comp_channel_handle = std::unique_ptr<ibv_comp_channel, comp_channel_deleter>;
using cq_handle = std::unique_ptr<ibv_cq, cq_deleter>;
using cq_ex_handle = std::unique_ptr<ibv_cq_ex, cq_ex_deleter>;
using wq_handle = std::unique_ptr<ibv_wq, wq_deleter>;
using ind_table_handle = std::unique_ptr<ibv_rwq_ind_table, ind_table_deleter>;
using qp_handle = std::unique_ptr<ibv_qp, qp_deleter>;
using mr_handle = std::unique_ptr<ibv_mr, mr_deleter>;
using flow_handle = std::unique_ptr<ibv_flow, flow_deleter>;

/// The flow rules of one reader.  Cleared front to back.
class flow_set
{
    std::vector<flow_handle> flows;
public:
    flow_set() = default;
    flow_set(flow_set &&) = default;
    flow_set &operator=(flow_set &&other)
    {
        clear();
        flows = std::move(other.flows);
        return *this;
    }
    ~flow_set() { clear(); }
    void add(ibv_flow *flow) { flows.emplace_back(flow); }
    void clear()
    {
        for (auto &f : flows)
            f.reset();
        flows.clear();
    }
    std::size_t size() const { return flows.size(); }
};

/// An owned file descriptor (-1: none).
class fd_handle
{
    int fd = -1;
public:
    fd_handle() = default;
    explicit fd_handle(int fd) : fd(fd) {}
    fd_handle(const fd_handle &) = delete;
    fd_handle &operator=(const fd_handle &) = delete;
    fd_handle(fd_handle &&other) noexcept : fd(other.release()) {}
    fd_handle &operator=(fd_handle &&other) noexcept
    {
        reset(other.release());
        return *this;
    }
    ~fd_handle() { reset(); }
    int get() const { return fd; }
    explicit operator bool() const { return fd >= 0; }
    int release()
    {
        int old = fd;
        fd = -1;
        return old;
    }
    void reset(int new_fd = -1)
    {
        if (fd >= 0)
            ::close(fd);
        fd = new_fd;
    }
};

} // namespace spead2::transport::ibv_detail
