// The multi-packet receive queue reader (see ibv_mprq.h).
#include "transport/ibv/ibv_mprq.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "common/logging.h"

namespace spead2::transport::ibv_detail
{

namespace
{

// MPRQ geometry, as in the reference: 64-byte strides, 1 MiB per work request.
constexpr int MPRQ_STRIDE_LOG = 6;
constexpr int MPRQ_WQE_LOG = 20;

} // anonymous namespace

mprq_reader::mprq_reader(packet_sink &sink, worker &thread, const ibv_config &cfg)
    : ibv_reader_base(sink, thread, cfg)
{
    // If anything below throws, q is destroyed (in the right order) and the
    // base releases the rest.
    queue_objects &o = q.emplace();
    const auto *m = ibv::mlx5();
    if (!m || !m->is_supported(context->device))
        throw mprq_unsupported("the device is not an mlx5 device (or libmlx5 is missing)");
    mlx5dv_context dv{};
    dv.comp_mask = MLX5DV_CONTEXT_MASK_STRIDING_RQ;
    // MLX5DV_CONTEXT_FLAGS_MPW_ALLOWED is about multi-packet *send* WQEs: it
    // says nothing about striding receive queues, so it is not required here
    // (a device or firmware setting that disables enhanced send WQEs must not
    // cost the receiver its fast path).
    if (m->query_device(context, &dv) != 0 || !(dv.comp_mask & MLX5DV_CONTEXT_MASK_STRIDING_RQ)
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
    o.cq.reset(ibv_create_cq_ex(context, &cq_attr));
    if (!o.cq)
        fail_pinning(errno, "ibv_create_cq_ex", pinned);

    ibv_wq_init_attr wq_attr{};
    wq_attr.wq_type = IBV_WQT_RQ;
    wq_attr.max_wr = std::uint32_t(n_wqe);
    wq_attr.max_sge = 1;
    wq_attr.pd = pd;
    wq_attr.cq = ibv_cq_ex_to_cq(o.cq.get());
    mlx5dv_wq_init_attr dv_wq{};
    dv_wq.comp_mask = MLX5DV_WQ_INIT_ATTR_MASK_STRIDING_RQ;
    dv_wq.striding_rq_attrs.single_stride_log_num_of_bytes = std::uint32_t(stride_log);
    dv_wq.striding_rq_attrs.single_wqe_log_num_of_strides = std::uint32_t(strides_log);
    dv_wq.striding_rq_attrs.two_byte_shift_en = 0;
    o.wq.reset(m->create_wq(context, &wq_attr, &dv_wq));
    if (!o.wq)
    {
        int err = errno;
        if (err == EOPNOTSUPP || err == ENOTSUP || err == ENOSYS || err == EINVAL)
            throw mprq_unsupported(std::string("mlx5dv_create_wq: ") + std::strerror(err));
        fail_errno(err, "mlx5dv_create_wq");
    }
    mlx5dv_obj obj{};
    obj.rwq.in = o.wq.get();
    obj.rwq.out = &rwq;
    if (m->init_obj(&obj, MLX5DV_OBJ_RWQ) != 0)
        fail_errno(errno, "mlx5dv_init_obj");
    if (rwq.stride != sizeof(mlx5_mprq_wqe))
        throw mprq_unsupported("unexpected multi-packet WQE layout");

    ibv_rwq_ind_table_init_attr ind_attr{};
    ind_attr.log_ind_tbl_size = 0;
    ibv_wq *wq = o.wq.get();
    ind_attr.ind_tbl = &wq;
    o.ind_table.reset(ibv_create_rwq_ind_table(context, &ind_attr));
    if (!o.ind_table)
        fail_errno(errno, "ibv_create_rwq_ind_table");

    static std::uint8_t hash_key[40] = {};   // one queue: the hash is irrelevant
    ibv_qp_init_attr_ex qp_attr{};
    qp_attr.qp_type = IBV_QPT_RAW_PACKET;
    qp_attr.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_IND_TABLE | IBV_QP_INIT_ATTR_RX_HASH;
    qp_attr.pd = pd;
    qp_attr.rwq_ind_tbl = o.ind_table.get();
    qp_attr.rx_hash_conf.rx_hash_function = IBV_RX_HASH_FUNC_TOEPLITZ;
    qp_attr.rx_hash_conf.rx_hash_key_len = sizeof(hash_key);
    qp_attr.rx_hash_conf.rx_hash_key = hash_key;
    qp_attr.rx_hash_conf.rx_hash_fields_mask = 0;
    // Called through the context's table directly (the inline helper would
    // reference ibv_create_qp, which we must not link against).
    verbs_context *vctx = verbs_get_ctx_op(context, create_qp_ex);
    if (!vctx)
        throw mprq_unsupported("the verbs provider has no create_qp_ex");
    o.qp.reset(vctx->create_qp_ex(context, &qp_attr));
    if (!o.qp)
        fail_qp(errno);
    o.memory = std::make_unique<buffer_memory>(buffer_size);
    o.mr.reset(register_memory(pd, o.memory->data(), buffer_size));
    if (!o.mr)
        fail_pinning(errno, "ibv_reg_mr (registering " + std::to_string(buffer_size) + " bytes)", pinned);
    o.flows = create_flows(o.qp.get());
}

void mprq_reader::release()
{
    q.reset();   // flows, QP, indirection table, WQ, CQ, MR, memory
    close_common();
}

std::vector<const void *> mprq_reader::event_objects() const
{
    return {ibv_cq_ex_to_cq(q->cq.get()), q->wq.get(), q->qp.get()};
}

void mprq_reader::post_wqe(std::size_t index)
{
    auto *wqes = static_cast<mlx5_mprq_wqe *>(rwq.buf);
    mlx5_mprq_wqe &w = wqes[post_head & (rwq.wqe_cnt - 1)];
    std::memset(&w.nseg, 0, sizeof(w.nseg));
    w.dseg.byte_count = htobe32(std::uint32_t(wqe_size));
    w.dseg.lkey = htobe32(q->mr->lkey);
    w.dseg.addr = htobe64(std::uint64_t(reinterpret_cast<std::uintptr_t>(q->memory->data() + index * wqe_size)));
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
    int err = ibv_modify_wq(q->wq.get(), &attr);   // returns the error number
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
    ibv_cq_ex *cq = q->cq.get();
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
    ibv_cq_ex *cq = q->cq.get();
    const std::uint8_t *base = q->memory->data();
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
                const std::uint8_t *frame = base + current_wqe * wqe_size + strides_used * stride_size;
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

} // namespace spead2::transport::ibv_detail
