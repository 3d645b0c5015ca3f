// The multi-packet receive queue reader (mlx5 striding RQ through direct
// verbs): each work request is a large buffer the NIC fills with many frames,
// one per run of 64-byte strides.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "transport/ibv/ibv_base.h"

namespace spead2::transport::ibv_detail
{

class mprq_reader : public ibv_reader_base
{
    /// The receive queue and what it needs, declared so that destruction
    /// (reverse order) goes flows, QP, indirection table, WQ, CQ, MR, memory.
    struct queue_objects
    {
        std::unique_ptr<buffer_memory> memory;
        mr_handle mr;
        cq_ex_handle cq;
        wq_handle wq;
        ind_table_handle ind_table;
        qp_handle qp;
        flow_set flows;
    };
    std::optional<queue_objects> q;
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
    ibv_cq *notify_cq() override { return ibv_cq_ex_to_cq(q->cq.get()); }
    void recover() override;
    std::vector<const void *> event_objects() const override;
public:
    /// Throws mprq_unsupported when the device cannot do it (use the plain reader).
    mprq_reader(packet_sink &sink, worker &thread, const ibv_config &config);
    ~mprq_reader() override { release(); }
    void start() override;
    void close() override { release(); }
};

} // namespace spead2::transport::ibv_detail
