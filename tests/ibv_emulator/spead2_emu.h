/* Extra entry points of libspead2_ibv_emulator.so (not part of any verbs API).
 *
 * Everything else the library exports has the exact prototype of the
 * libibverbs / librdmacm / libmlx5 function of the same name (see
 * <infiniband/verbs.h>, <rdma/rdma_cma.h>, <infiniband/mlx5dv.h>).
 */
#ifndef SPEAD2_EMU_H
#define SPEAD2_EMU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the counters as a JSON object (same content as SPEAD2_EMU_STATS)
 * into buf (NUL-terminated, truncated to len).  Returns the length the full
 * text needs, excluding the NUL (snprintf semantics). */
int spead2_emu_stats(char *buf, size_t len);

/* Puts one Ethernet frame on the wire and processes it synchronously on the
 * calling thread, exactly as the NIC thread would process a frame from
 * SPEAD2_EMU_WIRE.  Returns 0 if it was delivered to a receive queue (with
 * any completion status), 1 if it was dropped (see the counters). */
int spead2_emu_inject(const void *frame, size_t len);

/* 1 while the NIC thread runs, else 0. */
int spead2_emu_nic_running(void);

#ifdef __cplusplus
}
#endif

#endif
