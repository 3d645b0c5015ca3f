// What the RDMA stack of this machine offers the ibverbs receiver: the
// libraries, each device with its ports and capabilities, and which device
// owns a given interface address.  Used by spead2_ibv_check; needs no verbs
// headers to include (a build without them throws IBV_NOT_BUILT_MESSAGE).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spead2::transport
{

struct ibv_port_info
{
    int port = 0;
    std::string state;        ///< "active", "down", ...
    std::string link_layer;   ///< "ethernet", "infiniband", "unspecified"
    int active_mtu = 0;       ///< bytes
};

struct ibv_device_info
{
    std::string name;
    std::string error;        ///< non-empty: the device could not be opened or queried
    std::string fw_ver;
    bool flow_steering = false;    ///< IBV_DEVICE_MANAGED_FLOW_STEERING
    int max_qp_wr = 0, max_cqe = 0, num_comp_vectors = 0;
    std::uint64_t max_mr_size = 0;
    std::vector<ibv_port_info> ports;
    bool mlx5 = false;             ///< libmlx5 claims the device
    bool striding_rq = false;      ///< striding (multi-packet) receive queues offered
    bool striding_rq_raw_packet = false;   ///< ... for raw packet queues
    int min_stride_log = 0, max_stride_log = 0;     ///< log2 bytes per stride
    int min_strides_log = 0, max_strides_log = 0;   ///< log2 strides per work request
    std::string mprq_note;         ///< why multi-packet receive is not offered
};

struct ibv_probe_result
{
    std::string verbs_error, rdmacm_error, mlx5_error;   ///< empty: loaded
    std::string library_override;   ///< SPEAD2_IBV_LIBRARY_OVERRIDE, if set
    std::vector<ibv_device_info> devices;
    std::string interface_address;   ///< as asked for (may be empty)
    std::string interface_device;    ///< device that owns it (rdma_bind_addr)
    int interface_port = 0;
    std::string interface_error;
};

/// Query the RDMA stack.  Missing libraries are reported in the result, not
/// thrown; only a build without ibverbs throws (std::runtime_error).
ibv_probe_result ibv_probe(const std::string &interface_address);

} // namespace spead2::transport
