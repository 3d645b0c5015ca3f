// Run-time loading of libibverbs, librdmacm and libmlx5.
//
// The libraries are opened with dlopen on first use, never linked, so the
// package imports and runs on machines without RDMA libraries; using ibverbs
// there raises an error that names the missing package.  The environment
// variable SPEAD2_IBV_LIBRARY_OVERRIDE names one library that replaces all
// three (the emulated device used by the tests).
//
// Only functions that are real exported symbols are resolved here; the rest
// of the verbs API (ibv_poll_cq, ibv_create_flow, ibv_start_poll, ...) are
// inline helpers in the system headers that call through the function tables
// of the objects the library returns, and are used directly.
#pragma once

#include <stdexcept>
#include <string>

#include <infiniband/verbs.h>
#include <infiniband/mlx5dv.h>
#include <rdma/rdma_cma.h>

namespace spead2::ibv
{

constexpr const char *LIBRARY_OVERRIDE_ENV = "SPEAD2_IBV_LIBRARY_OVERRIDE";

/// Thrown when a library or symbol is missing (RuntimeError in Python).
class library_error : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

struct verbs_api
{
    ibv_device **(*get_device_list)(int *num_devices);
    void (*free_device_list)(ibv_device **list);
    ibv_context *(*open_device)(ibv_device *device);
    int (*close_device)(ibv_context *context);
    int (*query_device)(ibv_context *context, ibv_device_attr *attr);
    ibv_pd *(*alloc_pd)(ibv_context *context);
    int (*dealloc_pd)(ibv_pd *pd);
    ibv_mr *(*reg_mr)(ibv_pd *pd, void *addr, size_t length, int access);
    int (*dereg_mr)(ibv_mr *mr);
    ibv_comp_channel *(*create_comp_channel)(ibv_context *context);
    int (*destroy_comp_channel)(ibv_comp_channel *channel);
    ibv_cq *(*create_cq)(ibv_context *context, int cqe, void *cq_context, ibv_comp_channel *channel,
                         int comp_vector);
    int (*destroy_cq)(ibv_cq *cq);
    int (*get_cq_event)(ibv_comp_channel *channel, ibv_cq **cq, void **cq_context);
    void (*ack_cq_events)(ibv_cq *cq, unsigned int nevents);
    ibv_qp *(*create_qp)(ibv_pd *pd, ibv_qp_init_attr *attr);
    int (*destroy_qp)(ibv_qp *qp);
    int (*modify_qp)(ibv_qp *qp, ibv_qp_attr *attr, int attr_mask);
    int (*get_async_event)(ibv_context *context, ibv_async_event *event);
    void (*ack_async_event)(ibv_async_event *event);
    /// Optional (rdma-core >= 29): registration with IBV_ACCESS_RELAXED_ORDERING
    /// and other optional access flags.  nullptr when the library lacks it.
    ibv_mr *(*reg_mr_iova2)(ibv_pd *pd, void *addr, size_t length, uint64_t iova, unsigned int access);
    /// Optional: the exported (compat) ibv_query_port, used only when the
    /// provider does not fill verbs_context::query_port.
    int (*query_port)(ibv_context *context, uint8_t port_num, ibv_port_attr *attr);
};

struct rdmacm_api
{
    rdma_event_channel *(*create_event_channel)();
    void (*destroy_event_channel)(rdma_event_channel *channel);
    int (*create_id)(rdma_event_channel *channel, rdma_cm_id **id, void *context, rdma_port_space ps);
    int (*bind_addr)(rdma_cm_id *id, sockaddr *addr);
    int (*destroy_id)(rdma_cm_id *id);
};

struct mlx5_api
{
    bool (*is_supported)(ibv_device *device);
    int (*query_device)(ibv_context *context, mlx5dv_context *attrs);
    ibv_wq *(*create_wq)(ibv_context *context, ibv_wq_init_attr *attr, mlx5dv_wq_init_attr *mlx5_attr);
    int (*init_obj)(mlx5dv_obj *obj, uint64_t obj_type);
};

/// The loaded APIs; throw library_error (with what to install) if unavailable.
const verbs_api &verbs();
const rdmacm_api &rdmacm();
/// nullptr if libmlx5 is unavailable (then multi-packet receive is not used).
const mlx5_api *mlx5();
/// Why mlx5() is nullptr (empty if it is not).
std::string mlx5_error();

} // namespace spead2::ibv
