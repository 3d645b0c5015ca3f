#include "transport/ibv/loader.h"

#include <cstdlib>
#include <dlfcn.h>
#include <mutex>

#include "common/logging.h"

namespace spead2::ibv
{

namespace
{

struct loaded
{
    verbs_api verbs{};
    rdmacm_api rdmacm{};
    mlx5_api mlx5{};
    std::string verbs_error, rdmacm_error, mlx5_error;
    bool have_verbs = false, have_rdmacm = false, have_mlx5 = false;
};

void *open_library(const char *soname, std::string &error)
{
    const char *override_path = std::getenv(LIBRARY_OVERRIDE_ENV);
    const char *name = (override_path && *override_path) ? override_path : soname;
    void *handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!handle)
    {
        const char *why = dlerror();
        error = std::string("could not load ") + name + ": " + (why ? why : "unknown error");
    }
    return handle;
}

// Resolve every symbol or fail as a whole.
template<typename T>
bool resolve(void *handle, const char *symbol, T &out, std::string &error)
{
    void *p = dlsym(handle, symbol);
    if (!p)
    {
        error = std::string("symbol ") + symbol + " is missing";
        return false;
    }
    out = reinterpret_cast<T>(p);
    return true;
}

loaded load_all()
{
    loaded l;
    std::string err;
    // Handles are never closed: the function pointers must stay valid.
    if (void *h = open_library("libibverbs.so.1", err))
    {
        auto &v = l.verbs;
        l.have_verbs = resolve(h, "ibv_get_device_list", v.get_device_list, err)
            && resolve(h, "ibv_free_device_list", v.free_device_list, err)
            && resolve(h, "ibv_open_device", v.open_device, err)
            && resolve(h, "ibv_close_device", v.close_device, err)
            && resolve(h, "ibv_query_device", v.query_device, err)
            && resolve(h, "ibv_alloc_pd", v.alloc_pd, err)
            && resolve(h, "ibv_dealloc_pd", v.dealloc_pd, err)
            && resolve(h, "ibv_reg_mr", v.reg_mr, err)
            && resolve(h, "ibv_dereg_mr", v.dereg_mr, err)
            && resolve(h, "ibv_create_comp_channel", v.create_comp_channel, err)
            && resolve(h, "ibv_destroy_comp_channel", v.destroy_comp_channel, err)
            && resolve(h, "ibv_create_cq", v.create_cq, err)
            && resolve(h, "ibv_destroy_cq", v.destroy_cq, err)
            && resolve(h, "ibv_get_cq_event", v.get_cq_event, err)
            && resolve(h, "ibv_ack_cq_events", v.ack_cq_events, err)
            && resolve(h, "ibv_create_qp", v.create_qp, err)
            && resolve(h, "ibv_destroy_qp", v.destroy_qp, err)
            && resolve(h, "ibv_modify_qp", v.modify_qp, err)
            && resolve(h, "ibv_get_async_event", v.get_async_event, err)
            && resolve(h, "ibv_ack_async_event", v.ack_async_event, err);
        if (l.have_verbs)
        {
            // Newer entry point: its absence only costs relaxed ordering.
            std::string ignored;
            if (!resolve(h, "ibv_reg_mr_iova2", v.reg_mr_iova2, ignored))
                v.reg_mr_iova2 = nullptr;
            if (!resolve(h, "ibv_query_port", v.query_port, ignored))
                v.query_port = nullptr;
        }
    }
    if (!l.have_verbs)
    {
        l.verbs_error = err + ". ibverbs needs the RDMA user-space libraries: on Debian/Ubuntu "
                        "install the package rdma-core (libibverbs1, librdmacm1).";
        log_warning("%s", l.verbs_error.c_str());
    }
    err.clear();
    if (void *h = open_library("librdmacm.so.1", err))
    {
        auto &r = l.rdmacm;
        l.have_rdmacm = resolve(h, "rdma_create_event_channel", r.create_event_channel, err)
            && resolve(h, "rdma_destroy_event_channel", r.destroy_event_channel, err)
            && resolve(h, "rdma_create_id", r.create_id, err)
            && resolve(h, "rdma_bind_addr", r.bind_addr, err)
            && resolve(h, "rdma_destroy_id", r.destroy_id, err);
    }
    if (!l.have_rdmacm)
    {
        l.rdmacm_error = err + ". ibverbs needs librdmacm: on Debian/Ubuntu install the package "
                         "rdma-core (librdmacm1).";
        log_warning("%s", l.rdmacm_error.c_str());
    }
    err.clear();
    if (void *h = open_library("libmlx5.so.1", err))
    {
        auto &m = l.mlx5;
        l.have_mlx5 = resolve(h, "mlx5dv_is_supported", m.is_supported, err)
            && resolve(h, "mlx5dv_query_device", m.query_device, err)
            && resolve(h, "mlx5dv_create_wq", m.create_wq, err)
            && resolve(h, "mlx5dv_init_obj", m.init_obj, err);
    }
    if (!l.have_mlx5)
        l.mlx5_error = err;
    if (!l.have_mlx5)
        log_debug("libmlx5 unavailable (%s): multi-packet receive queues will not be used", err.c_str());
    return l;
}

const loaded &get()
{
    static const loaded l = load_all();
    return l;
}

} // anonymous namespace

const verbs_api &verbs()
{
    const loaded &l = get();
    if (!l.have_verbs)
        throw library_error(l.verbs_error);
    return l.verbs;
}

const rdmacm_api &rdmacm()
{
    const loaded &l = get();
    if (!l.have_rdmacm)
        throw library_error(l.rdmacm_error);
    return l.rdmacm;
}

const mlx5_api *mlx5()
{
    const loaded &l = get();
    return l.have_mlx5 ? &l.mlx5 : nullptr;
}

std::string mlx5_error()
{
    return get().mlx5_error;
}

} // namespace spead2::ibv
