"""Heap-at-a-time receiving (spead2.recv.Stream) and item decoding.

The reference spead2 (in its own virtualenv, see refvenv.py) is the oracle:
the same bytes are received by both packages and what they deliver (heap
types, counts, items, payload ranges, decoded values) and their statistics
must be identical.
"""

import asyncio
import json
import threading

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.recv.asyncio
import spead2.send

import refvenv
import spead_builder as sb

# ---------------------------------------------------------------- helpers

HAB = 48


def packet(cnt, heap_length, offset, payload, items=(), hab=HAB):
    """One packet; heap_length None leaves HEAP_LENGTH out (unsized heap);
    `items`: more item pointers, ``(immediate, id, value)``."""
    return sb.make_packet(cnt, heap_length, offset, payload, heap_address_bits=hab,
                          extra_pointers=sb.pointers([(i, v, bool(imm)) for imm, i, v in items], heap_address_bits=hab))


def heap(cnt, length, packet_size, items=(), order=None, drop=(), hab=HAB):
    """The packets of a heap of `length` bytes (byte i = (cnt + i) % 251)."""
    data = bytes((cnt + i) % 251 for i in range(length))
    offsets = list(range(0, length, packet_size)) or [0]
    pkts = [
        packet(cnt, length, off, data[off : off + packet_size], items if k == 0 else (), hab)
        for k, off in enumerate(offsets)
    ]
    if order is not None:
        pkts = [pkts[i] for i in order]
    return [p for i, p in enumerate(pkts) if i not in drop]


# Receives a file of concatenated packets with a heap stream and prints, as
# JSON, what was delivered and the statistics.  Runs unchanged under our
# package (in-process) and the reference (in its virtualenv).
SUMMARY = r"""
import json, sys
import spead2, spead2.recv
def summary(path, config, ring_config):
    data = open(path, "rb").read()
    # A ring that holds every heap: worker_blocked would depend on timing.
    stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(**config),
                                spead2.recv.RingStreamConfig(heaps=64, **ring_config))
    stream.add_buffer_reader(data)
    heaps = []
    for h in stream:
        entry = {"type": type(h).__name__, "cnt": h.cnt, "start": h.is_start_of_stream(),
                 "end": h.is_end_of_stream(), "hab": h.flavour.heap_address_bits,
                 "items": [[it.id, it.is_immediate, bytes(memoryview(it)).hex()] for it in h.get_items()]}
        if type(h).__name__ == "IncompleteHeap":
            entry["heap_length"] = h.heap_length
            entry["received_length"] = h.received_length
            entry["payload_ranges"] = [list(r) for r in h.payload_ranges]
        heaps.append(entry)
    # The reference ends the ring before it merges the last batch's
    # statistics: read them after stop(), which waits for the reader.
    stream.stop()
    return {"heaps": heaps, "stats": dict(stream.stats.items())}
if __name__ == "__main__":
    print(json.dumps(summary(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))))
"""


def ours_summary(path, config, ring_config):
    namespace = {"__name__": "summary"}
    exec(SUMMARY, namespace)
    return json.loads(json.dumps(namespace["summary"](str(path), config, ring_config)))


def reference_summary(path, config, ring_config):
    result = refvenv.run_reference(SUMMARY, str(path), json.dumps(config), json.dumps(ring_config))
    return json.loads(result.stdout)


def _traffic_cases():
    cases = {}
    # In order, several packets per heap, with a few items of each kind.
    items = [(0, 0x1000, 0), (0, 0x1001, 10), (1, 0x1002, 77), (1, 6, 0)]
    cases["in_order"] = (sum((heap(c, 100, 32, items) for c in range(1, 6)), []), {}, {})
    # FIFO eviction (max_heaps=2) with interleaved heaps, and a lost packet.
    pk = [heap(c, 64, 16, [(0, 0x2000, 0)]) for c in range(1, 7)]
    inter = []
    for i in range(4):
        for c, h in enumerate(pk):
            if (c, i) != (2, 1):
                inter.append(h[i])
    cases["evict"] = (inter, {"max_heaps": 2}, {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    cases["evict_contiguous_only"] = (inter, {"max_heaps": 2}, {})
    # Out-of-order packets, duplicates and an overlap, with and without allow_out_of_order.
    ooo = heap(1, 100, 20, [(0, 0x3000, 0)], order=[2, 0, 4, 1, 3]) + heap(2, 100, 20, order=[0, 1, 1, 2])
    ooo += [packet(2, 100, 50, bytes(20))] + heap(2, 100, 20)[3:]
    cases["ooo_allowed"] = (ooo, {"allow_out_of_order": True},
                            {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    cases["ooo_denied"] = (ooo, {}, {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    # Substreams, single-packet heaps (a duplicated one is delivered twice).
    sub = []
    for c in range(1, 9):
        sub += heap(c, 40, 40 if c % 3 == 0 else 16, [(0, 0x4000, 0)])
    sub += heap(3, 40, 40, [(0, 0x4000, 0)])
    cases["substreams"] = (sub, {"substreams": 3, "max_heaps": 1}, {"contiguous_only": False})
    # Unsized heaps: no HEAP_LENGTH, payload grows; one item address beyond the data.
    uns = [packet(1, None, 0, bytes(range(30)), [(0, 0x5000, 0), (0, 0x5001, 20)]),
           packet(1, None, 30, bytes(range(30, 90))),
           packet(2, None, 0, bytes(10), [(0, 0x5000, 0), (0, 0x5001, 50)]),
           packet(3, None, 0, bytes(10), [(0, 0x5000, 0)]), packet(3, 40, 10, bytes(30))]
    cases["unsized"] = (uns, {}, {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    cases["unsized_denied"] = (uns, {"allow_unsized_heaps": False}, {"contiguous_only": False})
    # Heap length changes, flavour changes, item address beyond HEAP_LENGTH.
    bad = [packet(1, 40, 0, bytes(20), [(0, 0x6000, 0)]), packet(1, 50, 20, bytes(20)),
           packet(1, 40, 20, bytes(20), hab=40),
           packet(2, 40, 0, bytes(40), [(0, 0x6000, 0), (0, 0x6001, 60)]),
           packet(3, 40, 0, bytes(20), [(0, 0x6000, 45)]), packet(3, 40, 20, bytes(20))]
    cases["inconsistent"] = (bad, {}, {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    # A packet without HEAP_LENGTH that runs past the length announced
    # earlier: the payload grows (a complete heap of 110 bytes), as in the
    # reference; and an item address past it in a later packet.
    over = [packet(1, 100, 0, bytes(50), [(0, 0x6100, 0)]), packet(1, None, 50, bytes(range(60))),
            packet(2, 100, 0, bytes(50), [(0, 0x6100, 0)]), packet(2, None, 50, bytes(50), [(0, 0x6101, 120)])]
    cases["overrun"] = (over, {}, {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    cases["overrun_ooo"] = (over, {"allow_out_of_order": True},
                            {"contiguous_only": False, "incomplete_keep_payload_ranges": True})
    # Stop item: in a complete heap (discarded) and in an incomplete one.
    stop = heap(1, 30, 30) + [packet(2, 30, 0, bytes(30), [(1, 6, 2)])] + heap(3, 30, 30)
    cases["stop_complete"] = (stop, {}, {})
    stop2 = heap(1, 30, 10)[:2] + [packet(2, 60, 0, bytes(30), [(1, 6, 2)])] + heap(3, 30, 30)
    cases["stop_incomplete"] = (stop2, {}, {"contiguous_only": False})
    cases["stop_ignored"] = (stop, {"stop_on_stop_item": False}, {})
    # Another flavour (64-40), NULL and zero-length items.
    f40 = heap(5, 24, 24, [(0, 0x7000, 0), (0, 0, 8), (0, 0x7001, 16), (0, 0x7002, 24)], hab=40)
    cases["flavour40"] = (f40, {}, {})
    return cases


TRAFFIC = _traffic_cases()


# ------------------------------------------------------ parity with the reference

@pytest.mark.parametrize("case", sorted(TRAFFIC))
def test_delivery_and_stats_match_reference(case, tmp_path):
    """Heaps delivered (type, cnt, items and their bytes, payload ranges) and
    every statistic equal the reference's for the same bytes."""
    packets, config, ring_config = TRAFFIC[case]
    path = tmp_path / "traffic.bin"
    path.write_bytes(b"".join(packets))
    ours = ours_summary(path, config, ring_config)
    ref = reference_summary(path, config, ring_config)
    assert ours == ref


# Items of every descriptor kind: (name, shape, dtype, format, order, value);
# a value starting with "=" is a Python expression (JSON has no tuples).
DESCRIPTOR_KINDS = [
    ("u32imm", (), None, [("u", 32)], "C", 7),
    ("u40imm", (), None, [("u", 40)], "C", 2**39 + 5),
    ("u48", (), None, [("u", 48)], "C", 5),
    ("u64", (), None, [("u", 64)], "C", 2**63 + 1),
    ("i16", (), None, [("i", 16)], "C", -3),
    ("f64", (), None, [("f", 64)], "C", 1.5),
    ("f32arr", (3,), None, [("f", 32)], "C", [1.0, 2.0, 3.0]),
    ("u12", (4,), None, [("u", 12)], "C", [1, 2, 3, 4095]),
    ("i5", (3,), None, [("i", 5)], "C", [-1, 2, -16]),
    ("b8", (2,), None, [("b", 8)], "C", [True, False]),
    ("b1", (3,), None, [("b", 1)], "C", [True, False, True]),
    ("c8str", (None,), None, [("c", 8)], "C", "hello"),
    ("c8fixed", (3,), None, [("c", 8)], "C", "abc"),
    ("c8scalar", (), None, [("c", 8)], "C", "=np.bytes_(b'x')"),
    ("struct", (2,), None, [("u", 8), ("i", 16)], "C", "=[(1, -2), (3, 4)]"),
    ("structodd", (), None, [("u", 4), ("i", 12), ("f", 32)], "C", "=(1, -2, 0.5)"),
    ("var_u8", (None,), None, [("u", 8)], "C", [1, 2, 3]),
    ("var2d", (2, None), None, [("u", 16)], "C", [[1, 2, 3], [4, 5, 6]]),
    ("np_f32", (2, 3), "float32", None, "C", "=np.arange(6, dtype=np.float32).reshape(2, 3)"),
    ("np_F", (2, 3), ">i4", None, "F", "=np.arange(6, dtype='>i4').reshape(2, 3)"),
    ("np_scalar", (), "uint16", None, "C", "=np.uint16(9)"),
    ("np_struct", (2,), [("a", "<u2"), ("b", ">f8")], None, "C",
     "=np.array([(1, 2.5), (3, -1.0)], dtype=[('a', '<u2'), ('b', '>f8')])"),
    ("np_cplx", (2,), "complex64", None, "C", "=np.array([1+2j, 3-4j], dtype=np.complex64)"),
]

# Sends every kind (with the package it runs under) to a file, or receives a
# file and describes every decoded item.  Same code in both environments.
KINDS_SCRIPT = r"""
import json, sys
import numpy as np
import spead2, spead2.recv, spead2.send
KINDS = json.loads(sys.argv[2])
def send(path, flavour_bits):
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, flavour_bits, 0))
    for i, (name, shape, dtype, fmt, order, value) in enumerate(KINDS):
        if isinstance(value, str) and value.startswith("="):
            value = eval(value[1:])
        dtype = None if dtype is None else np.dtype(dtype if isinstance(dtype, str) else [tuple(f) for f in dtype])
        fmt = None if fmt is None else [tuple(f) for f in fmt]
        ig.add_item(0x1000 + i, name, "about " + name, tuple(shape), dtype=dtype, format=fmt, order=order,
                    value=value)
    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=1024))
    stream.send_heap(ig.get_heap(descriptors="all", data="all"))
    stream.send_heap(ig.get_end())
    open(path, "wb").write(stream.getvalue())
def describe(path):
    stream = spead2.recv.Stream(spead2.ThreadPool())
    stream.add_buffer_reader(open(path, "rb").read())
    ig = spead2.ItemGroup()
    updated = []
    for heap in stream:
        updated.append(sorted(ig.update(heap)))
    stream.stop()   # the reference merges the last batch's statistics after ending the ring
    out = {"updated": updated, "stats": dict(stream.stats.items())}
    for name, *_ in KINDS:
        it = ig[name]
        v = it.value
        out[name] = [it.id, it.name, it.description, list(it.shape), str(it.dtype), it.order, str(it.format),
                     type(v).__name__, str(getattr(v, "dtype", None)), str(getattr(v, "shape", None)),
                     repr(v), bool(getattr(v, "flags", None) is not None and v.flags.c_contiguous)]
    return out
if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[3], int(sys.argv[4]))
    else:
        print(json.dumps(describe(sys.argv[3])))
"""


def _kinds_ours():
    namespace = {"__name__": "kinds"}
    exec(KINDS_SCRIPT, namespace)
    return namespace


@pytest.mark.parametrize("flavour_bits", [40, 48])
@pytest.mark.parametrize("sender", ["ours", "reference"])
def test_item_group_decoding_matches_reference(sender, flavour_bits, tmp_path, monkeypatch):
    """Every descriptor kind, sent by our sender or the reference's, decodes
    in our ItemGroup exactly as in the reference's (value, type, dtype,
    shape, memory order); both receivers keep the same statistics."""
    path = tmp_path / "items.bin"
    kinds = json.dumps(DESCRIPTOR_KINDS)
    monkeypatch.setattr("sys.argv", ["kinds", "send", kinds, str(path), str(flavour_bits)])
    ns = _kinds_ours()
    if sender == "ours":
        ns["send"](str(path), flavour_bits)
    else:
        refvenv.run_reference(KINDS_SCRIPT, "send", kinds, str(path), str(flavour_bits))
    monkeypatch.setattr("sys.argv", ["kinds", "describe", kinds, str(path)])
    ours = json.loads(json.dumps(ns["describe"](str(path))))
    ref = json.loads(refvenv.run_reference(KINDS_SCRIPT, "describe", kinds, str(path)).stdout)
    assert ours == ref
    assert len(ours["updated"][0]) == len(DESCRIPTOR_KINDS)


# ------------------------------------------------------------ our own API

def _sender(queue):
    return spead2.send.InprocStream(spead2.ThreadPool(), [queue], spead2.send.StreamConfig())


def test_inproc_round_trip_values():
    """Our sender → InprocQueue → our Stream + ItemGroup gives back the values."""
    queue = spead2.InprocQueue()
    sender = _sender(queue)
    ig = spead2.send.ItemGroup()
    ig.add_item(0x1000, "count", "a counter", (), format=[("u", 32)], value=1)
    ig.add_item(0x1001, "data", "an array", (4, 3), dtype=np.int16, order="F",
                value=np.arange(12, dtype=np.int16).reshape(4, 3))
    ig.add_item(0x1002, "text", "a string", (None,), format=[("c", 8)], value="spead")
    sender.send_heap(ig.get_start())
    sender.send_heap(ig.get_heap())
    ig["count"].value = 2
    ig["data"].value = -np.arange(12, dtype=np.int16).reshape(4, 3)
    sender.send_heap(ig.get_heap())
    sender.send_heap(ig.get_end())
    queue.stop()

    stream = spead2.recv.Stream(spead2.ThreadPool())
    stream.add_inproc_reader(queue)
    rig = spead2.ItemGroup()
    heaps = list(stream)
    assert [h.is_start_of_stream() for h in heaps] == [True, False, False]
    assert all(isinstance(h, spead2.recv.Heap) for h in heaps)
    assert heaps[0].flavour == spead2.Flavour()
    assert rig.update(heaps[0]) == {}
    assert sorted(rig.update(heaps[1])) == ["count", "data", "text"]
    assert rig["count"].value == 1 and rig["text"].value == "spead"
    np.testing.assert_array_equal(rig["data"].value, np.arange(12).reshape(4, 3))
    assert rig["data"].value.flags.f_contiguous
    assert sorted(rig.update(heaps[2])) == ["count", "data"]
    assert rig["count"].value == 2
    np.testing.assert_array_equal(rig["data"].value, -np.arange(12).reshape(4, 3))
    stats = stream.stats
    assert stats["heaps"] == 3 and stats["incomplete_heaps_flushed"] == 0


def test_get_nowait_ringbuffer_and_fd():
    queue = spead2.InprocQueue()
    stream = spead2.recv.Stream(spead2.ThreadPool(), ring_config=spead2.recv.RingStreamConfig(heaps=3))
    assert stream.ringbuffer.capacity() == 3 and stream.ringbuffer.size() == 0
    assert stream.ring_config.heaps == 3 and stream.fd >= 0
    stream.add_inproc_reader(queue)
    with pytest.raises(spead2.Empty):
        stream.get_nowait()
    for c in (1, 2):
        for p in heap(c, 20, 20):
            queue.add_packet(p)
    queue.stop()
    assert [h.cnt for h in stream] == [1, 2]
    with pytest.raises(spead2.Stopped):
        stream.get_nowait()
    with pytest.raises(spead2.Stopped):
        stream.get()


def test_ring_stream_config():
    c = spead2.recv.RingStreamConfig()
    assert (c.heaps, c.contiguous_only, c.incomplete_keep_payload_ranges) == (4, True, False)
    assert spead2.recv.RingStreamConfig.DEFAULT_HEAPS == 4
    c = spead2.recv.RingStreamConfig(heaps=7, contiguous_only=False, incomplete_keep_payload_ranges=True)
    assert (c.heaps, c.contiguous_only, c.incomplete_keep_payload_ranges) == (7, False, True)
    with pytest.raises(ValueError):
        spead2.recv.RingStreamConfig(heaps=0)
    with pytest.raises(TypeError):
        spead2.recv.RingStreamConfig(bogus=1)


def test_worker_blocked_counts_full_ring():
    """A full ring blocks the worker (counted once per blocked push); no heap is lost."""
    queue = spead2.InprocQueue()
    stream = spead2.recv.Stream(spead2.ThreadPool(), ring_config=spead2.recv.RingStreamConfig(heaps=1))
    for c in range(1, 6):
        for p in heap(c, 20, 20):
            queue.add_packet(p)
    queue.stop()
    stream.add_inproc_reader(queue)
    # Wait (bounded) until the worker has found the ring full.
    done = threading.Event()
    for _ in range(2000):
        if stream.stats["worker_blocked"] >= 1:
            done.set()
            break
        threading.Event().wait(0.005)
    assert done.is_set()
    assert [h.cnt for h in stream] == [1, 2, 3, 4, 5]
    stats = stream.stats
    assert 1 <= stats["worker_blocked"] <= 4
    assert stats["heaps"] == 5


def test_user_stop_ends_iteration():
    queue = spead2.InprocQueue()
    stream = spead2.recv.Stream(spead2.ThreadPool())
    stream.add_inproc_reader(queue)
    for p in heap(1, 40, 10)[:2]:   # an incomplete heap stays live
        queue.add_packet(p)
    for _ in range(2000):   # bounded wait until the reader has taken both packets
        if stream.stats["packets"] == 2:
            break
        threading.Event().wait(0.005)
    assert stream.stats["packets"] == 2
    stream.stop()
    assert list(stream) == []
    assert stream.stats["incomplete_heaps_flushed"] == 1


def test_explicit_start():
    queue = spead2.InprocQueue()
    for p in heap(1, 20, 20):
        queue.add_packet(p)
    stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(explicit_start=True))
    stream.add_inproc_reader(queue)
    with pytest.raises(spead2.Empty):
        stream.get_nowait()
    stream.start()
    with pytest.raises(RuntimeError, match="Cannot add readers after explicit start"):
        stream.add_inproc_reader(spead2.InprocQueue())
    queue.stop()
    assert [h.cnt for h in stream] == [1]


def test_raw_items():
    data = b"".join(heap(3, 12, 12, [(0, 0x100, 0), (1, 0x101, 0x123456)]))
    stream = spead2.recv.Stream(spead2.ThreadPool())
    stream.add_buffer_reader(data)
    (h,) = list(stream)
    addressed, immediate = h.get_items()
    assert (addressed.id, addressed.is_immediate) == (0x100, False)
    assert bytes(memoryview(addressed)) == bytes((3 + i) % 251 for i in range(12))
    assert (immediate.id, immediate.is_immediate, immediate.immediate_value) == (0x101, True, 0x123456)
    assert bytes(memoryview(immediate)) == (0x123456).to_bytes(6, "big")
    del h, stream
    # The item keeps the heap's payload alive.
    assert bytes(memoryview(addressed))[:2] == bytes([3, 4])


def test_asyncio_stream():
    async def main():
        queue = spead2.InprocQueue()
        stream = spead2.recv.asyncio.Stream(spead2.ThreadPool())
        stream.add_inproc_reader(queue)

        async def produce():
            for c in range(1, 4):
                await asyncio.sleep(0.01)
                for p in heap(c, 30, 10):
                    queue.add_packet(p)
            queue.stop()

        task = asyncio.ensure_future(produce())
        first = await stream.get()
        rest = [h.cnt async for h in stream]
        await task
        return [first.cnt] + rest

    assert asyncio.run(main()) == [1, 2, 3]


def test_heap_receive_example_runs():
    """examples/heap_receive.py, shown in doc/recv-heap.rst, runs and decodes every heap."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "heap_receive.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "start of stream" in proc.stdout
    assert "heap 2: source = 'Vela'" in proc.stdout
    assert "heap 4: timestamp = 2048" in proc.stdout
    assert "heaps received: 4" in proc.stdout
