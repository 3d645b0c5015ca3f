// Implementation of ibv_probe (see ibv_probe.h): read-only queries, nothing
// is created on the device but a protection-domain-free context per device
// and, for the interface lookup, one rdma_cm id.
#include "transport/ibv/ibv_probe.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "common/socket_util.h"
#include "transport/ibv/loader.h"

namespace spead2::transport
{

namespace
{

const char *port_state_name(ibv_port_state state)
{
    switch (state)
    {
    case IBV_PORT_DOWN: return "down";
    case IBV_PORT_INIT: return "init";
    case IBV_PORT_ARMED: return "armed";
    case IBV_PORT_ACTIVE: return "active";
    case IBV_PORT_ACTIVE_DEFER: return "active-defer";
    default: return "unknown";
    }
}

const char *link_layer_name(std::uint8_t layer)
{
    switch (layer)
    {
    case IBV_LINK_LAYER_ETHERNET: return "ethernet";
    case IBV_LINK_LAYER_INFINIBAND: return "infiniband";
    default: return "unspecified";
    }
}

int mtu_bytes(ibv_mtu mtu)
{
    switch (mtu)
    {
    case IBV_MTU_256: return 256;
    case IBV_MTU_512: return 512;
    case IBV_MTU_1024: return 1024;
    case IBV_MTU_2048: return 2048;
    case IBV_MTU_4096: return 4096;
    default: return 0;
    }
}

/// Port attributes through the provider's table (the header's inline would
/// reference the exported ibv_query_port, which is not linked).
int query_port(ibv_context *context, std::uint8_t port, ibv_port_attr &attr)
{
    std::memset(&attr, 0, sizeof(attr));
    if (verbs_context *v = verbs_get_ctx_op(context, query_port))
        return v->query_port(context, port, &attr, sizeof(attr));
    if (auto fn = ibv::verbs().query_port)
        return fn(context, port, &attr);
    return EOPNOTSUPP;
}

void probe_device(ibv_device *device, ibv_device_info &info)
{
    const auto &v = ibv::verbs();
    info.name = device->name;
    ibv_context *context = v.open_device(device);
    if (!context)
    {
        info.error = std::string("ibv_open_device: ") + std::strerror(errno);
        return;
    }
    ibv_device_attr attr{};
    if (v.query_device(context, &attr) != 0)
        info.error = std::string("ibv_query_device: ") + std::strerror(errno);
    else
    {
        info.fw_ver = attr.fw_ver;
        info.flow_steering = attr.device_cap_flags & IBV_DEVICE_MANAGED_FLOW_STEERING;
        info.max_qp_wr = attr.max_qp_wr;
        info.max_cqe = attr.max_cqe;
        info.max_mr_size = attr.max_mr_size;
        info.num_comp_vectors = context->num_comp_vectors;
        for (int p = 1; p <= attr.phys_port_cnt; p++)
        {
            ibv_port_attr pa;
            ibv_port_info port;
            port.port = p;
            if (query_port(context, std::uint8_t(p), pa) == 0)
            {
                port.state = port_state_name(pa.state);
                port.link_layer = link_layer_name(pa.link_layer);
                port.active_mtu = mtu_bytes(pa.active_mtu);
            }
            else
                port.state = "unknown (ibv_query_port failed)";
            info.ports.push_back(port);
        }
        const ibv::mlx5_api *m = ibv::mlx5();
        if (!m)
            info.mprq_note = "libmlx5 is not available: " + ibv::mlx5_error();
        else if (!m->is_supported(device))
            info.mprq_note = "not an mlx5 device";
        else
        {
            info.mlx5 = true;
            mlx5dv_context dv{};
            dv.comp_mask = MLX5DV_CONTEXT_MASK_STRIDING_RQ;
            if (m->query_device(context, &dv) != 0)
                info.mprq_note = std::string("mlx5dv_query_device: ") + std::strerror(errno);
            else if (!(dv.comp_mask & MLX5DV_CONTEXT_MASK_STRIDING_RQ))
                info.mprq_note = "the driver reports no striding receive queue capabilities";
            else
            {
                const auto &caps = dv.striding_rq_caps;
                info.striding_rq = true;
                info.striding_rq_raw_packet = caps.supported_qpts & (1U << IBV_QPT_RAW_PACKET);
                info.min_stride_log = int(caps.min_single_stride_log_num_of_bytes);
                info.max_stride_log = int(caps.max_single_stride_log_num_of_bytes);
                info.min_strides_log = int(caps.min_single_wqe_log_num_of_strides);
                info.max_strides_log = int(caps.max_single_wqe_log_num_of_strides);
                if (!info.striding_rq_raw_packet)
                    info.mprq_note = "striding receive queues are not offered for raw packet queues";
            }
        }
    }
    v.close_device(context);
}

void probe_interface(ibv_probe_result &result)
{
    const auto &cm = ibv::rdmacm();
    in_addr addr = resolve_ipv4(result.interface_address, "interface address");
    rdma_event_channel *channel = cm.create_event_channel();
    if (!channel)
    {
        result.interface_error = std::string("rdma_create_event_channel: ") + std::strerror(errno);
        return;
    }
    rdma_cm_id *id = nullptr;
    if (cm.create_id(channel, &id, nullptr, RDMA_PS_UDP) != 0)
        result.interface_error = std::string("rdma_create_id: ") + std::strerror(errno);
    else
    {
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr = addr;
        if (cm.bind_addr(id, reinterpret_cast<sockaddr *>(&sa)) != 0 || !id->verbs)
            result.interface_error = std::string("no RDMA device owns it (rdma_bind_addr: ")
                                     + std::strerror(errno) + ")";
        else
        {
            result.interface_device = id->verbs->device->name;
            result.interface_port = id->port_num;
        }
        cm.destroy_id(id);
    }
    cm.destroy_event_channel(channel);
}

} // anonymous namespace

ibv_probe_result ibv_probe(const std::string &interface_address)
{
    ibv_probe_result result;
    if (const char *o = std::getenv(ibv::LIBRARY_OVERRIDE_ENV))
        result.library_override = o;
    result.interface_address = interface_address;
    const ibv::verbs_api *v = nullptr;
    try
    {
        v = &ibv::verbs();
    }
    catch (ibv::library_error &e)
    {
        result.verbs_error = e.what();
    }
    try
    {
        ibv::rdmacm();
    }
    catch (ibv::library_error &e)
    {
        result.rdmacm_error = e.what();
    }
    if (!ibv::mlx5())
        result.mlx5_error = ibv::mlx5_error();
    if (v)
    {
        int n = 0;
        ibv_device **list = v->get_device_list(&n);
        if (list)
        {
            for (int i = 0; i < n; i++)
            {
                ibv_device_info info;
                probe_device(list[i], info);
                result.devices.push_back(std::move(info));
            }
            v->free_device_list(list);
        }
    }
    if (!interface_address.empty())
    {
        if (!result.rdmacm_error.empty())
            result.interface_error = "librdmacm is not available";
        else
            probe_interface(result);
    }
    return result;
}

} // namespace spead2::transport
