/* The place callback of the differential test (tests/test_differential.py).
 *
 * The same compiled object is loaded (with ctypes) by the runner under both
 * packages, ours and the reference spead2 4.5.1, and handed to
 * ChunkStreamConfig.place as a PyCapsule named "void (void *, size_t, void *)"
 * whose context points at a struct diff_params.  So both packages see exactly
 * the same placement decisions.
 *
 * Keep struct diff_params in step with DiffParams in diff_runner.py (every
 * field is an int64_t, in the same order).
 */
#include <stddef.h>
#include <stdint.h>

struct chunk_place_data
{
    const uint8_t *packet;
    size_t packet_size;
    const int64_t *items;
    int64_t chunk_id;
    size_t heap_index;
    size_t heap_offset;
    uint64_t *batch_stats;
    uint8_t *extra;
    size_t extra_offset;
    size_t extra_size;
};

struct diff_params
{
    /* Index in the requested items of each item the callback reads; -1 if not requested. */
    int64_t idx_pos;         /* the heap's position (its place in the chunk sequence) */
    int64_t idx_len;         /* HEAP_LENGTH */
    int64_t idx_plen;        /* PAYLOAD_LENGTH */
    int64_t idx_cnt;         /* HEAP_CNT */
    int64_t idx_extra;       /* the item copied into extra */
    int64_t n_items;         /* length of the items array */
    /* Layout */
    int64_t heaps_per_chunk;
    int64_t slot_size;       /* bytes of chunk data per heap position */
    int64_t flags_per_slot;  /* entries of present per heap position */
    int64_t bias;            /* added (mod 2^64) to the chunk ID */
    int64_t data_size;       /* declared sizes of the chunk buffers */
    int64_t present_size;
    int64_t extra_total;
    int64_t extra_per_heap;  /* bytes of chunk.extra per heap position */
    int64_t extra_size;      /* bytes of extra to copy (0: none); <= max_heap_extra */
    int64_t presence_payload; /* packet presence payload size, 0 if disabled */
    /* Rules */
    int64_t reject_mod;      /* reject when pos % reject_mod == reject_rem (0: never) */
    int64_t reject_rem;
    int64_t oor_mod;         /* place fully out of range when pos % oor_mod == oor_rem */
    int64_t oor_rem;
    int64_t overflow_oor;    /* heap longer than the room left: 1 = out of range, 0 = reject */
    int64_t max_len;         /* reject heaps longer than this (< 0: no limit) */
    int64_t pos_from_cnt;    /* 1: position = HEAP_CNT item (idx_cnt) instead of idx_pos */
    /* Statistics (indices into batch_stats; -1: none) */
    int64_t stat_counter;    /* COUNTER: heaps placed (incl. out of range) */
    int64_t stat_max;        /* MAXIMUM: largest heap length seen */
    int64_t stat_reject;     /* COUNTER: heaps this callback rejected */
    int64_t stat_poke;       /* any index: incremented for every call (core/chunk stats) */
    int64_t stat_calls;      /* COUNTER: every call (to account for stat_poke) */
};

static int64_t item(const struct chunk_place_data *d, int64_t idx)
{
    if (idx < 0 || d->items == NULL)
        return -1;
    return d->items[idx];
}

static void bump(uint64_t *stats, int64_t idx, uint64_t by)
{
    if (idx >= 0 && stats != NULL)
        stats[idx] += by;
}

static void reject(struct chunk_place_data *d, const struct diff_params *p)
{
    d->chunk_id = -1;
    bump(d->batch_stats, p->stat_reject, 1);
}

void diff_place(void *data_ptr, size_t data_size, void *user)
{
    struct chunk_place_data *d = (struct chunk_place_data *) data_ptr;
    const struct diff_params *p = (const struct diff_params *) user;
    (void) data_size;

    bump(d->batch_stats, p->stat_poke, 1);
    bump(d->batch_stats, p->stat_calls, 1);

    int64_t pos = item(d, p->pos_from_cnt ? p->idx_cnt : p->idx_pos);
    int64_t len = item(d, p->idx_len);
    if (p->stat_max >= 0 && d->batch_stats != NULL && len >= 0 && (uint64_t) len > d->batch_stats[p->stat_max])
        d->batch_stats[p->stat_max] = (uint64_t) len;
    if (pos < 0 || len < 0)
    {
        reject(d, p);
        return;
    }
    if (p->max_len >= 0 && len > p->max_len)
    {
        reject(d, p);
        return;
    }
    if (p->reject_mod > 0 && pos % p->reject_mod == p->reject_rem)
    {
        reject(d, p);
        return;
    }
    uint64_t chunk = (uint64_t) (pos / p->heaps_per_chunk) + (uint64_t) p->bias;
    if ((int64_t) chunk < 0)
    {
        reject(d, p);   /* wrapped past 2^63 - 1 */
        return;
    }
    int64_t index = pos % p->heaps_per_chunk;
    int64_t heap_index = index * p->flags_per_slot;
    int64_t heap_offset = index * p->slot_size;
    int oor = p->oor_mod > 0 && pos % p->oor_mod == p->oor_rem;
    int overflow = heap_offset + len > p->data_size;
    if (p->presence_payload > 0 && len > 0
        && heap_index + (len - 1) / p->presence_payload >= p->present_size)
        overflow = 1;
    if (overflow)
    {
        if (!p->overflow_oor)
        {
            reject(d, p);
            return;
        }
        oor = 1;
    }
    int64_t extra_offset = index * p->extra_per_heap;
    if (oor)
    {
        /* Entirely outside the declared buffers (the reference's runner gives
         * its chunks slack after the declared sizes to absorb these writes). */
        heap_index = p->present_size + (pos % 3);
        heap_offset = p->data_size + 8 * (pos % 3);
        extra_offset = p->extra_total + (pos % 3);
    }
    d->chunk_id = (int64_t) chunk;
    d->heap_index = (size_t) heap_index;
    d->heap_offset = (size_t) heap_offset;
    if (p->extra_size > 0 && d->extra != NULL)
    {
        uint64_t v = (uint64_t) item(d, p->idx_extra);
        uint64_t w = (uint64_t) item(d, p->idx_plen);
        for (int64_t i = 0; i < p->extra_size; i++)
        {
            uint64_t src = (i < 8) ? v : (i < 16) ? w : (uint64_t) pos;
            d->extra[i] = (uint8_t) ((src >> (8 * (i % 8))) ^ (uint64_t) (i * 37));
        }
        d->extra_offset = (size_t) extra_offset;
        d->extra_size = (size_t) p->extra_size;
    }
    bump(d->batch_stats, p->stat_counter, 1);
}
