// The plain reader: a raw packet queue pair with one receive work request per
// frame slot (any verbs NIC with flow steering).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "transport/ibv/ibv_base.h"

namespace spead2::transport::ibv_detail
{

class plain_reader : public ibv_reader_base
{
    /// The receive queue and what it needs, declared so that destruction
    /// (reverse order) goes flows, QP, CQ, MR, memory.
    struct queue_objects
    {
        std::unique_ptr<buffer_memory> memory;
        mr_handle mr;
        cq_handle cq;
        qp_handle qp;
        flow_set flows;
    };
    std::optional<queue_objects> q;
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
    ibv_cq *notify_cq() override { return q->cq.get(); }
    void recover() override;
    std::vector<const void *> event_objects() const override;
public:
    plain_reader(packet_sink &sink, worker &thread, const ibv_config &config);
    ~plain_reader() override { release(); }
    void start() override;
    void close() override { release(); }
};

} // namespace spead2::transport::ibv_detail
