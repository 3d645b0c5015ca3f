"""Interoperability with the reference spead2 4.5.1, in both directions.

The reference runs in its own virtualenv (see :mod:`refvenv`), as a
subprocess.

(a) Heaps sent by the reference (its ``BytesStream`` and ``UdpStream``) are
    received by our :class:`spead2.recv.ChunkRingStream`: every payload byte
    and every immediate item value (copied into the chunk's ``extra`` by the
    place callback) must be what the reference sent.
(b) Heaps, descriptors and end-of-stream sent by our sender (``BytesStream``,
    ``UdpStream``, ``PcapFileStream``, and the ``spead2_send`` tool) are
    decoded by the reference's heap receiver (``spead2.recv.Stream`` and
    ``spead2.ItemGroup``): the names, descriptions, shapes, dtypes, formats
    and values must be the ones we sent, and over UDP the end-of-stream heap
    must stop the reference's stream.
"""

import json
import math
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send
from spead2.tools import send as send_tool

import refvenv

pytestmark = pytest.mark.timeout(120)

TIMESTAMP_ID = 0x1600
FREQUENCY_ID = 0x4103
FLAGS_ID = 0x4104
DATA_ID = 0x3300
GAINS_ID = 0x3301
#: Bytes of the second addressed item (4 × float32) of the reference's heaps.
GAINS_BYTES = 16
TS0 = 1_000_000
TS_STEP = 4096
FREQ_STEP = 256
#: Loopback rate for UDP senders (bytes/s): fast, but gentle on receive buffers.
UDP_RATE = 200e6
#: Items whose values the place callback copies into the chunk's extra.
EXTRA_ITEMS = [TIMESTAMP_ID, FREQUENCY_ID, spead2.HEAP_LENGTH_ID, FLAGS_ID]


@pytest.fixture(scope="module")
def ref_python():
    python = refvenv.reference_python()
    if python is None:
        pytest.skip(refvenv.unavailable_reason())
    return python


# ---------------------------------------------------------------------------
# Code shared by both sides: what data heap i holds, and how values are
# turned into JSON for comparison.  It is exec'd here and prepended to the
# reference's snippets, so both sides use one definition.

SHARED = r'''
import numpy as np

TS0 = 1_000_000
TS_STEP = 4096
FREQ_STEP = 256


def heap_values(i, channels, bits, heap_size):
    """(timestamp, frequency, flags, data, gains) of data heap i."""
    mask = (1 << bits) - 1
    timestamp = TS0 + (i // channels) * TS_STEP
    frequency = (i % channels) * FREQ_STEP
    flags = (0x9E3779B97F4A7C15 * (i + 1)) & mask        # uses all the bits
    data = ((np.arange(heap_size) + 3 * i) % 251).astype(np.uint8)
    gains = np.array([i, i + 0.5, -i, 1e6 + i], dtype='<f4')
    return timestamp, frequency, flags, data, gains


def jsonable(value):
    """A JSON-friendly form of an item value, identical for equal values."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, complex):
        return {'complex': [value.real, value.imag]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {'bytes': bytes(value).hex()}
    return value


def describe(item):
    """Descriptor fields of an item, as JSON."""
    dtype = None
    if item.dtype is not None:
        dtype = jsonable(np.lib.format.dtype_to_descr(np.dtype(item.dtype)))
    return {
        'id': item.id,
        'name': item.name,
        'description': item.description,
        'shape': list(item.shape),
        'dtype': dtype,
        'format': None if item.format is None else [list(f) for f in item.format],
        'order': item.order,
    }
'''

_shared = {}
exec(SHARED, _shared)
heap_values = _shared["heap_values"]
jsonable = _shared["jsonable"]
describe = _shared["describe"]


# ---------------------------------------------------------------------------
# (a) the reference sends, our chunk stream receives

REF_SENDER = SHARED + r'''
import sys
import spead2, spead2.send

mode, target = sys.argv[1], sys.argv[2]
heap_size, n_heaps, channels, bits, packet = (int(a) for a in sys.argv[3:8])
rate = float(sys.argv[8])
flavour = spead2.Flavour(4, 64, bits, 0)
ig = spead2.send.ItemGroup(flavour=flavour)
ig.add_item(0x1600, 'timestamp', 'sample counter', shape=(), format=[('u', bits)])
ig.add_item(0x4103, 'frequency', 'first channel', shape=(), format=[('u', bits)])
ig.add_item(0x4104, 'flags', 'full-width immediate', shape=(), format=[('u', bits)])
ig.add_item(0x3300, 'data', 'payload', shape=(heap_size,), dtype=np.uint8)
ig.add_item(0x3301, 'gains', 'second addressed item', shape=(4,), dtype='<f4')
thread_pool = spead2.ThreadPool()
config = spead2.send.StreamConfig(max_packet_size=packet, rate=rate)
if mode == 'bytes':
    stream = spead2.send.BytesStream(thread_pool, config)
else:
    host, port = target.rsplit(':', 1)
    stream = spead2.send.UdpStream(thread_pool, [(host, int(port))], config)
stream.send_heap(ig.get_heap(descriptors='all', data='none'))
for i in range(n_heaps):
    values = heap_values(i, channels, bits, heap_size)
    for name, value in zip(['timestamp', 'frequency', 'flags', 'data', 'gains'], values):
        ig[name].value = value
    stream.send_heap(ig.get_heap(descriptors='none', data='all'))
stream.send_heap(ig.get_end())
if mode == 'bytes':
    with open(target, 'wb') as f:
        f.write(stream.getvalue())
# Tear down in order: left to the interpreter's exit, the thread pool may go
# first, and the reference's stream destructor then spins for ever.
del stream
del thread_pool
print('sent', n_heaps)
'''

CHUNK_PARAMS = np.dtype([
    ("ts0", np.int64),
    ("ts_step", np.int64),
    ("freq_step", np.int64),
    ("n_freq", np.int64),
    ("heap_length", np.int64),
])


@pytest.fixture(scope="module")
def place_with_extra():
    """A place callback: one chunk per timestamp, one slot per frequency; the
    values of EXTRA_ITEMS are copied into extra (4 × int64 per heap)."""
    numba = pytest.importorskip("numba")
    scipy = pytest.importorskip("scipy")
    import ctypes

    from numba import types

    from spead2.numba import intp_to_voidptr
    from spead2.recv.numba import chunk_place_data

    params_record = types.Record.make_c_struct([(name, types.int64) for name in CHUNK_PARAMS.names])
    n_items = len(EXTRA_ITEMS)

    @numba.cfunc(types.void(types.CPointer(chunk_place_data), types.size_t, types.CPointer(params_record)),
                 nopython=True)
    def place(data_ptr, data_size, params_ptr):
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), n_items, dtype=np.int64)
        p = numba.carray(params_ptr, 1)
        ts = items[0]
        freq = items[1]
        if ts < p[0].ts0 or freq < 0 or items[2] != p[0].heap_length:
            return
        index = freq // p[0].freq_step
        if index >= p[0].n_freq:
            return
        data[0].chunk_id = (ts - p[0].ts0) // p[0].ts_step
        data[0].heap_index = index
        data[0].heap_offset = index * p[0].heap_length
        extra = numba.carray(intp_to_voidptr(data[0].extra), n_items, dtype=np.int64)
        for k in range(n_items):
            extra[k] = items[k]
        data[0].extra_offset = index * n_items * 8
        data[0].extra_size = n_items * 8

    def make(channels, heap_length):
        params = np.zeros(1, CHUNK_PARAMS)
        params[0] = (TS0, TS_STEP, FREQ_STEP, channels, heap_length)
        llc = scipy.LowLevelCallable(
            place.ctypes, ctypes.c_void_p(params.ctypes.data), "void (void *, size_t, void *)")
        return llc, params

    return make


def receive_chunks(place_with_extra, add_reader, n_heaps, channels, heap_length, timeout=30):
    """Run a chunk stream; returns ({chunk_id: (present, data, extra)}, stats)."""
    llc, params = place_with_extra(channels, heap_length)
    n_chunks = math.ceil(n_heaps / channels) + 4
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(),
        spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.ChunkStreamConfig(items=EXTRA_ITEMS, max_chunks=4, place=llc,
                                      max_heap_extra=8 * len(EXTRA_ITEMS)),
        data_ring,
        free_ring,
    )
    for _ in range(n_chunks):
        stream.add_free_chunk(spead2.recv.Chunk(
            present=np.zeros(channels, np.uint8),
            data=np.zeros(channels * heap_length, np.uint8),
            extra=np.zeros(channels * len(EXTRA_ITEMS), np.int64),
        ))
    watchdog = threading.Timer(timeout, stream.stop)
    watchdog.start()
    try:
        add_reader(stream)
        chunks = {}
        for chunk in data_ring:
            assert chunk.chunk_id not in chunks
            chunks[chunk.chunk_id] = (chunk.present.copy(), chunk.data.copy(), np.array(chunk.extra).copy())
        stream.stop()
    finally:
        watchdog.cancel()
    del params  # kept alive until here: the callback reads it
    return chunks, stream.stats


def check_reference_heaps(chunks, stats, n_heaps, channels, bits, heap_size):
    heap_length = heap_size + GAINS_BYTES
    seen = 0
    for chunk_id, (present, data, extra) in chunks.items():
        extra = extra.reshape(channels, len(EXTRA_ITEMS))
        for index in range(channels):
            i = chunk_id * channels + index
            if i >= n_heaps:
                assert not present[index], f"unexpected heap {i}"
                continue
            assert present[index], f"heap {i} missing"
            seen += 1
            timestamp, frequency, flags, payload, gains = heap_values(i, channels, bits, heap_size)
            assert list(extra[index]) == [timestamp, frequency, heap_length, flags], f"heap {i} items"
            got = data[index * heap_length:(index + 1) * heap_length]
            np.testing.assert_array_equal(got[:heap_size], payload, err_msg=f"heap {i} data")
            assert got[heap_size:].tobytes() == gains.tobytes(), f"heap {i} gains"
    assert seen == n_heaps
    assert stats["incomplete_heaps_evicted"] == 0
    assert stats["incomplete_heaps_flushed"] == 0
    assert stats["malformed_packets"] == 0
    assert stats["rejected_heaps"] == 2  # the descriptor heap and the stop heap


@pytest.mark.parametrize(
    "heap_size,bits,packet",
    [(1024, 40, 1472), (8192, 48, 1472), (4000, 40, 9000), (20000, 40, 8000)],
    ids=["1k-64-40-single", "8k-64-48-multi", "4k-64-40-jumbo", "20k-64-40-multi"],
)
def test_reference_bytes_to_chunks(ref_python, place_with_extra, tmp_path, heap_size, bits, packet):
    n_heaps, channels = 24, 4
    path = tmp_path / "ref.spead"
    refvenv.run_reference(REF_SENDER, "bytes", path, heap_size, n_heaps, channels, bits, packet, 0)
    blob = path.read_bytes()
    chunks, stats = receive_chunks(
        place_with_extra, lambda s: s.add_buffer_reader(blob), n_heaps, channels, heap_size + GAINS_BYTES)
    check_reference_heaps(chunks, stats, n_heaps, channels, bits, heap_size)


@pytest.mark.parametrize("heap_size,bits", [(1024, 40), (8192, 48)], ids=["1k-64-40", "8k-64-48"])
def test_reference_udp_to_chunks(ref_python, place_with_extra, heap_size, bits):
    n_heaps, channels = 64, 4
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Room for the whole stream (about 0.5 MiB of payload at 8 KiB heaps), so
    # a receiver held up on a loaded machine does not drop: with the default
    # 208 KiB this test failed once in a full run on a noisy VM.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    procs = []

    def add_reader(stream):
        stream.add_udp_reader(sock)
        # The reader is listening: start the reference sender.
        procs.append(refvenv.start_reference(
            REF_SENDER, "udp", f"127.0.0.1:{port}", heap_size, n_heaps, channels, bits, 1472, UDP_RATE))

    try:
        chunks, stats = receive_chunks(place_with_extra, add_reader, n_heaps, channels, heap_size + GAINS_BYTES)
        out, err = procs[0].communicate(timeout=30)
        assert procs[0].returncode == 0, err
    finally:
        sock.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The end-of-stream heap stopped our stream (the watchdog did not).
    check_reference_heaps(chunks, stats, n_heaps, channels, bits, heap_size)


# ---------------------------------------------------------------------------
# (b) we send, the reference's heap receiver decodes

REF_RECEIVER = SHARED + r'''
import json, socket, sys
import spead2, spead2.recv

mode, source = sys.argv[1], sys.argv[2]
bits = int(sys.argv[3])
thread_pool = spead2.ThreadPool()
config = spead2.recv.StreamConfig(max_heaps=4, bug_compat=0)
stream = spead2.recv.Stream(thread_pool, config)
if mode == 'bytes':
    with open(source, 'rb') as f:
        stream.add_buffer_reader(f.read())
elif mode == 'pcap':
    stream.add_udp_pcap_file_reader(source)
else:
    # 'udp' or 'tcp', listening on source ('-': 127.0.0.1; '::1': IPv6)
    host = '127.0.0.1' if source == '-' else source
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    if mode == 'tcp':
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen(1)
        stream.add_tcp_reader(sock)
    else:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((host, 0))
        stream.add_udp_reader(sock)
    print('PORT', sock.getsockname()[1], flush=True)
ig = spead2.ItemGroup()
heaps = []
for heap in stream:
    descriptors = [describe(spead2.Descriptor.from_raw(d, heap.flavour)) for d in heap.get_descriptors()]
    updated = ig.update(heap)
    heaps.append({
        'cnt': heap.cnt,
        'end': heap.is_end_of_stream(),
        'complete': heap.is_complete() if hasattr(heap, 'is_complete') else True,
        'descriptors': descriptors,
        'values': {name: jsonable(item.value) for name, item in updated.items()},
    })
result = {
    'heaps': heaps,
    'items': {name: describe(item) for name, item in ig.items()},
    'stats': {'heaps': stream.stats.heaps, 'incomplete': stream.stats.incomplete_heaps_evicted},
}
stream.stop()
del stream
del thread_pool
print('RESULT', json.dumps(result), flush=True)
'''


def parse_result(stdout):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"the reference printed no result:\n{stdout}")


def dtype_json(dtype):
    return jsonable(np.lib.format.dtype_to_descr(np.dtype(dtype)))


class Plan:
    """An ItemGroup of many kinds of items, and the heaps we send from it,
    with what the reference should decode from each."""

    def __init__(self, bits, big=4096):
        self.flavour = spead2.Flavour(4, 64, bits, 0)
        self.big = big
        ig = self.ig = spead2.send.ItemGroup(flavour=self.flavour)
        self.specs = {}  # name -> descriptor fields, as describe() gives them
        self.dtypes = {}  # name -> numpy dtype (None for format items)

        def add(item_id, name, description, shape, dtype=None, order="C", format=None):
            ig.add_item(item_id, name, description, shape=shape, dtype=dtype, order=order, format=format)
            self.dtypes[name] = None if dtype is None else np.dtype(dtype)
            self.specs[name] = dict(id=item_id, name=name, description=description, shape=list(shape),
                                    dtype=None if dtype is None else dtype_json(dtype),
                                    format=None if format is None else [list(f) for f in format], order=order)

        add(0x1600, "timestamp", "an immediate as wide as the heap address", (), format=[("u", bits)])
        add(0x1001, "bytes_payload", "a multi-packet payload", (big,), dtype=np.uint8)
        add(0x1002, "int16_2d", "C-order int16", (4, 3), dtype=np.int16)
        add(0x1003, "float64_fortran", "Fortran-order float64", (2, 3), dtype=np.float64, order="F")
        add(0x1004, "complex64", "complex values", (5,), dtype=np.complex64)
        add(0x1005, "big_endian", "big-endian uint32", (3,), dtype=">u4")
        add(0x1006, "record", "structured dtype", (2,), dtype=np.dtype([("a", "<u2"), ("b", ">f8")]))
        add(0x1007, "scalar_float", "a numpy scalar", (), dtype=np.float32)
        add(0x1008, "string", "variable-length characters", (None,), format=[("c", 8)])
        add(0x1009, "bitfields", "packed 4- and 12-bit fields", (3,), format=[("u", 4), ("i", 12)])
        add(0x100A, "booleans", "bool dtype", (8,), dtype=np.bool_)
        add(0x100B, "variable_int32", "variable-length int32 by format", (None,), format=[("i", 32)])
        add(0x100C, "format_floats", "floats by format", (2,), format=[("f", 64)])
        add(0x100D, "small_uint", "a one-byte immediate", (), format=[("u", 8)])
        self.heaps = []  # (names of descriptors expected, {name: expected value})

    def set(self, **values):
        for name, value in values.items():
            self.ig[name].value = value

    def expected_value(self, name):
        value = self.ig[name].value
        if self.dtypes[name] is not None:
            value = np.asarray(value, dtype=self.dtypes[name])
        return jsonable(value)

    def first_values(self):
        big = self.big
        self.set(
            timestamp=(1 << self.flavour.heap_address_bits) - 2,
            bytes_payload=(np.arange(big) * 7 % 256).astype(np.uint8),
            int16_2d=np.arange(-6, 6, dtype=np.int16).reshape(4, 3),
            float64_fortran=np.array([[1.5, -2.25, 3e300], [0.0, -0.0, 1e-300]]),
            complex64=np.array([1 + 2j, -3.5j, 0, 1e10, -1 - 1j], dtype=np.complex64),
            big_endian=np.array([1, 0xDEADBEEF, 0xFFFFFFFF], dtype=">u4"),
            record=np.array([(1, 2.5), (65535, -1e-10)], dtype=[("a", "<u2"), ("b", ">f8")]),
            scalar_float=np.float32(1.25),
            string="hello, SPEAD",
            bitfields=[(1, -3), (15, 2047), (0, -2048)],
            booleans=np.array([True, False, True, True, False, False, True, False]),
            variable_int32=[-3000000, -1, 0, 1, 2**31 - 1, -2**31],
            format_floats=[3.141592653589793, -2.5e-300],
            small_uint=255,
        )

    def record_heap(self, heap, descriptors, names):
        self.heaps.append((heap, sorted(descriptors), {name: self.expected_value(name) for name in names}))

    def build(self):
        """Three data heaps: everything; a delta; a descriptor re-issue with all values."""
        self.first_values()
        names = list(self.specs)
        self.record_heap(self.ig.get_heap(), names, names)
        self.set(timestamp=12345, string="x", variable_int32=[42],
                 bytes_payload=np.full(self.big, 0xA5, np.uint8))
        self.record_heap(self.ig.get_heap(), [], ["timestamp", "string", "variable_int32", "bytes_payload"])
        self.record_heap(self.ig.get_heap(descriptors="all", data="all"), names, names)
        return self

    def send(self, stream, substream_index=0):
        for heap, _, _ in self.heaps:
            stream.send_heap(heap, substream_index=substream_index)
        stream.send_heap(self.ig.get_end(), substream_index=substream_index)

    def check(self, result):
        got = result["heaps"]
        assert len(got) == len(self.heaps), [h["values"].keys() for h in got]
        for k, (heap, (_, descriptors, values)) in enumerate(zip(got, self.heaps)):
            assert not heap["end"]
            assert heap["complete"]
            assert sorted(d["name"] for d in heap["descriptors"]) == descriptors, f"heap {k}"
            for d in heap["descriptors"]:
                assert d == self.specs[d["name"]], f"heap {k} descriptor {d['name']}"
            assert sorted(heap["values"]) == sorted(values), f"heap {k}"
            for name, value in values.items():
                assert heap["values"][name] == value, f"heap {k} item {name}"
        assert result["items"] == self.specs
        assert result["stats"]["incomplete"] == 0


@pytest.mark.parametrize("bits", [40, 48])
@pytest.mark.parametrize("packet", [1472, 9000])
def test_our_bytes_to_reference(ref_python, tmp_path, bits, packet):
    plan = Plan(bits).build()
    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=packet))
    plan.send(stream)
    path = tmp_path / "ours.spead"
    path.write_bytes(stream.getvalue())
    proc = refvenv.run_reference(REF_RECEIVER, "bytes", path, bits)
    plan.check(parse_result(proc.stdout))


def test_our_pcap_to_reference(ref_python, tmp_path):
    plan = Plan(48).build()
    path = tmp_path / "ours.pcap"
    stream = spead2.send.PcapFileStream(spead2.ThreadPool(), str(path), [("127.0.0.1", 7148)])
    plan.send(stream)
    stream.flush()
    del stream
    proc = refvenv.run_reference(REF_RECEIVER, "pcap", path, 48)
    plan.check(parse_result(proc.stdout))


def _start_ours(code, *args):
    """`code` under our package, in a subprocess (as the reference runs)."""
    return subprocess.Popen([sys.executable, "-c", code, *[str(a) for a in args]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def _start_reference_udp_receiver(bits, mode="udp", host="-", start=None):
    proc = (start or refvenv.start_reference)(REF_RECEIVER, mode, host, bits)
    killer = threading.Timer(30, proc.kill)  # in case it never gets going
    killer.start()
    line = proc.stdout.readline()
    killer.cancel()
    if not line.startswith("PORT "):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the reference receiver did not start: {line!r}\n{err}")
    return proc, int(line.split()[1])


def _finish(proc, timeout=30):
    try:
        out, err = proc.communicate(timeout=timeout)
    except Exception:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the reference receiver did not stop (no end-of-stream?)\n{err}")
    assert proc.returncode == 0, err
    return parse_result(out)


@pytest.mark.parametrize("allow_gso", [True, False], ids=["gso", "no-gso"])
def test_our_udp_to_reference(ref_python, allow_gso):
    plan = Plan(48, big=20000).build()
    proc, port = _start_reference_udp_receiver(48)
    try:
        stream = spead2.send.UdpStream(spead2.ThreadPool(), [("127.0.0.1", port)],
                                       spead2.send.StreamConfig(rate=UDP_RATE), allow_gso=allow_gso)
        plan.send(stream)
        del stream
        # The end-of-stream heap must stop the reference's stream.
        result = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plan.check(result)


def test_our_udp_substreams_to_reference(ref_python):
    """Two destinations: each gets its heaps and its own end-of-stream."""
    plans = [Plan(40).build(), Plan(40).build()]
    receivers = [_start_reference_udp_receiver(40) for _ in plans]
    try:
        stream = spead2.send.UdpStream(spead2.ThreadPool(), [("127.0.0.1", port) for _, port in receivers],
                                       spead2.send.StreamConfig(rate=UDP_RATE, max_packet_size=8000))
        assert stream.num_substreams == 2
        for index, plan in enumerate(plans):
            plan.send(stream, substream_index=index)
        del stream
        results = [_finish(proc) for proc, _ in receivers]
    finally:
        for proc, _ in receivers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for plan, result in zip(plans, results):
        plan.check(result)


def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1)")


@needs_ipv6
def test_our_udp_ipv6_to_reference(ref_python):
    plan = Plan(48, big=20000).build()
    proc, port = _start_reference_udp_receiver(48, "udp", "::1")
    try:
        stream = spead2.send.UdpStream(spead2.ThreadPool(), [("::1", port)],
                                       spead2.send.StreamConfig(rate=UDP_RATE))
        plan.send(stream)
        del stream
        result = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plan.check(result)


def _tcp_round_trip(start, host, make_stream):
    """Plan heaps through a TcpStream made by `make_stream(port)` to
    REF_RECEIVER started by `start` (the reference, or our package)."""
    plan = Plan(40, big=50000).build()
    proc, port = _start_reference_udp_receiver(40, "tcp", host, start=start)
    try:
        stream = make_stream(port)
        plan.send(stream)
        del stream  # closing the connection ends the receiver's stream
        result = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plan.check(result)


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["v4", "v6"])
@pytest.mark.parametrize("receiver", ["reference", "ours"])
def test_our_tcp_to_receiver(ref_python, receiver, host):
    """Our TcpStream (endpoints form) into the reference's TCP reader and
    into ours: every heap, descriptor and value decoded as sent."""
    start = refvenv.start_reference if receiver == "reference" else _start_ours
    config = spead2.send.StreamConfig(max_packet_size=9000)
    _tcp_round_trip(start, host, lambda port: spead2.send.TcpStream(spead2.ThreadPool(), [(host, port)], config))


def test_our_tcp_socket_form_to_reference(ref_python):
    """TcpStream adopting a connected socket (closed by us straight away:
    the stream has its own duplicate)."""

    def make(port):
        sock = socket.create_connection(("127.0.0.1", port))
        stream = spead2.send.TcpStream(spead2.ThreadPool(), sock)
        sock.close()
        return stream

    _tcp_round_trip(refvenv.start_reference, "127.0.0.1", make)


def test_our_asyncio_tcp_to_reference(ref_python):
    """spead2.send.asyncio.TcpStream.connect, then async_send_heap."""
    import asyncio

    import spead2.send.asyncio

    plan = Plan(40).build()
    proc, port = _start_reference_udp_receiver(40, "tcp", "127.0.0.1")

    async def send():
        stream = await spead2.send.asyncio.TcpStream.connect(spead2.ThreadPool(), [("127.0.0.1", port)])
        for heap, _, _ in plan.heaps:
            await stream.async_send_heap(heap)
        await stream.async_send_heap(plan.ig.get_end())

    try:
        asyncio.run(send())
        result = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plan.check(result)


# ---------------------------------------------------------------------------
# spead2_send's traffic, decoded by the reference

def test_send_tool_pcap_to_reference(ref_python, tmp_path):
    path = tmp_path / "tool.pcap"
    n_heaps, channels, heap_size, bits = 10, 3, 3000, 40
    assert send_tool.main([
        "--pcap", str(path), "--heaps", str(n_heaps), "--channels", str(channels), "--heap-size", str(heap_size),
        "--addr-bits", str(bits), "--descriptors", "--timestamp-step", "100", "--first-timestamp", "7",
        "--channel-step", "16",
    ]) == 0
    result = parse_result(refvenv.run_reference(REF_RECEIVER, "pcap", path, bits).stdout)
    heaps = result["heaps"]
    assert len(heaps) == 1 + n_heaps
    # The descriptor heap comes first, with names, shapes and formats.
    assert {d["name"]: (d["id"], d["shape"], d["dtype"], d["format"]) for d in heaps[0]["descriptors"]} == {
        "timestamp": (0x1600, [], None, [["u", bits]]),
        "frequency": (0x4103, [], None, [["u", bits]]),
        "data": (0x3300, [heap_size], "|u1", None),
    }
    for i, heap in enumerate(heaps[1:]):
        assert heap["values"] == {
            "timestamp": 7 + (i // channels) * 100,
            "frequency": (i % channels) * 16,
            "data": send_tool.expected_payload(i, heap_size).tolist(),
        }


def test_send_tool_udp_to_reference(ref_python):
    proc, port = _start_reference_udp_receiver(48)
    try:
        assert send_tool.main([f"127.0.0.1:{port}", "--heaps", "20", "--heap-size", "5000",
                               "--descriptors", "--rate", "0.2"]) == 0
        result = _finish(proc)  # stopped by spead2_send's end-of-stream heap
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    heaps = result["heaps"]
    assert len(heaps) == 21
    for i, heap in enumerate(heaps[1:]):
        assert heap["values"]["data"] == send_tool.expected_payload(i, 5000).tolist()
        assert heap["values"]["frequency"] == (i % 4) * 1250
        assert heap["values"]["timestamp"] == i // 4


def test_send_tool_tcp_to_reference(ref_python):
    """spead2_send --tcp into the reference's TCP reader."""
    proc, port = _start_reference_udp_receiver(48, "tcp", "127.0.0.1")
    try:
        assert send_tool.main(["--tcp", f"127.0.0.1:{port}", "--heaps", "12", "--heap-size", "5000",
                               "--channels", "3", "--descriptors"]) == 0
        result = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    heaps = result["heaps"]
    assert len(heaps) == 1 + 12
    for i, heap in enumerate(heaps[1:]):
        assert heap["values"]["data"] == send_tool.expected_payload(i, 5000).tolist()
        assert heap["values"]["frequency"] == (i % 3) * (5000 // 4)
