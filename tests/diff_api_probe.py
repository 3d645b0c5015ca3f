"""API checks run under both packages (see test_differential.py, part 3/4).

    python diff_api_probe.py PLACE_SO

Prints one JSON object describing how ``StreamStats`` addition behaves on
statistics taken from real streams (the reference cannot construct
``StreamStats`` itself), and how ``Item.value = None`` behaves.  The test
runs it with our interpreter and with the reference's and compares.
"""

import ctypes
import functools
import json
import operator
import sys

import numpy as np

import diff_runner as dr
import spead_builder as sb
import spead2
import spead2.recv

POS_ID = 0x1000
HEAPS_PER_CHUNK = 4


def packet(cnt, length, offset, payload, pos):
    return sb.make_packet(cnt, length, offset, payload, [(POS_ID, pos)], heap_address_bits=40)


def stream_stats(lib, heaps, *, with_max=True, extra_stat=False, buffer=False):
    """Run a chunk stream over single-packet heaps [(cnt, length, pos)]; return its stats."""
    config = spead2.recv.StreamConfig(max_heaps=4)
    counter = config.add_stat("probe.placed")
    maximum = config.add_stat("probe.max_len", spead2.recv.StreamStatConfig.Mode.MAXIMUM) if with_max else -1
    if extra_stat:
        config.add_stat("probe.other")
    params = dr.DiffParams()
    for name in dr.PARAM_FIELDS:
        setattr(params, name, -1)
    params.idx_pos, params.idx_len, params.idx_plen, params.idx_cnt = 0, 1, -1, -1
    params.n_items = 2
    params.heaps_per_chunk = HEAPS_PER_CHUNK
    params.slot_size = 64
    params.flags_per_slot = 1
    params.bias = 0
    params.data_size = 64 * HEAPS_PER_CHUNK
    params.present_size = HEAPS_PER_CHUNK
    params.extra_total = params.extra_per_heap = params.extra_size = 0
    params.presence_payload = 0
    params.reject_mod = params.oor_mod = 0
    params.reject_rem = params.oor_rem = 0
    params.overflow_oor = 0
    params.pos_from_cnt = 0
    params.stat_counter = counter
    params.stat_max = maximum
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=[POS_ID, spead2.HEAP_LENGTH_ID], max_chunks=2, place=dr.make_place(lib, params))
    data_ring = spead2.recv.ChunkRingbuffer(4)
    free_ring = spead2.recv.ChunkRingbuffer(8)
    stream = spead2.recv.ChunkRingStream(spead2.ThreadPool(1), config, chunk_config, data_ring, free_ring)
    for _ in range(8):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                                                data=np.zeros(64 * HEAPS_PER_CHUNK, np.uint8)))
    packets = [packet(cnt, length, 0, bytes(length), pos) for cnt, length, pos in heaps]
    if buffer:  # one batch: max_batch = number of packets
        stream.add_buffer_reader(np.frombuffer(b"".join(packets), np.uint8).copy())
    else:  # one packet per batch: max_batch = 1
        queue = spead2.InprocQueue()
        for p in packets:
            queue.add_packet(p)
        queue.stop()
        stream.add_inproc_reader(queue)
    for chunk in data_ring:
        stream.add_free_chunk(chunk)
    stream.stop()
    return stream.stats


def as_dict(stats):
    return {name: int(stats[name]) for name in stats.keys()}


def outcome(fn):
    try:
        value = fn()
    except Exception as exc:  # the type is what is compared
        return {"raises": type(exc).__name__}
    return {"value": value}


def main():
    lib = ctypes.CDLL(sys.argv[1])
    out = {}
    # Three streams with the same statistics: probe.max_len (MAXIMUM) is 48, 16
    # and 0, max_batch (MAXIMUM) 1, 2 and 0.
    a = stream_stats(lib, [(1, 16, 0), (2, 48, 1), (3, 32, 2)])
    b = stream_stats(lib, [(1, 16, 0), (2, 8, 5)], buffer=True)
    z = stream_stats(lib, [])
    other = stream_stats(lib, [(1, 16, 0)], extra_stat=True)
    out["a"] = as_dict(a)
    out["b"] = as_dict(b)
    out["z"] = as_dict(z)
    out["a+b"] = outcome(lambda: as_dict(a + b))
    out["b+a"] = outcome(lambda: as_dict(b + a))
    out["reduce"] = outcome(lambda: as_dict(functools.reduce(operator.add, [a, b, z])))
    out["sum_start"] = outcome(lambda: as_dict(sum([a, b], z)))
    out["sum_start_kw"] = outcome(lambda: as_dict(sum([a, b], start=z)))
    out["sum_no_start"] = outcome(lambda: as_dict(sum([a, b])))
    out["a+other"] = outcome(lambda: as_dict(a + other))
    out["a+1"] = outcome(lambda: as_dict(a + 1))
    out["operands_unchanged"] = [as_dict(a), as_dict(b)]

    def iadd():
        c = stream_stats(lib, [(1, 16, 0), (2, 48, 1), (3, 32, 2)])
        before = c
        c += b
        return {"same_object": c is before, "c": as_dict(c), "b": as_dict(b)}
    out["iadd"] = outcome(iadd)

    # Item.value = None
    def item_none(set_first):
        item = spead2.Item(0x1000, "x", "d", (), format=[("u", 32)])
        if set_first:
            item.value = 5
        version = item.version
        try:
            item.value = None
        except Exception as exc:
            return {"raises": type(exc).__name__, "message": str(exc),
                    "value": item.value, "version_change": item.version - version}
        return {"value": item.value, "version_change": item.version - version}
    out["item_none_after_set"] = item_none(True)
    out["item_none_fresh"] = item_none(False)
    out["send_has_item"] = hasattr(spead2.send, "Item") if hasattr(spead2, "send") else None
    print(json.dumps(out))


if __name__ == "__main__":
    import spead2.send  # noqa: F401  (for send_has_item)
    main()
