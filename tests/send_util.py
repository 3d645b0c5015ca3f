"""Helpers for the sending tests.

* :func:`load_items` / :func:`load_send` give the pure-Python item and send
  modules.  They prefer the installed package; when it does not (yet) have
  them, the modules are loaded straight from ``python/spead2`` in this
  checkout.  :func:`load_send` can also load ``spead2.send`` on top of
  :mod:`fake_backend <send_util>` — a pure-Python stand-in for the compiled
  ``spead2._spead2.send`` (``_Heap``, ``StreamConfig``, ``BytesStream``) that
  follows the same contract — so that the Python layer can be tested before,
  and independently of, the C++ sender.
* :func:`packetise` is a small reference packetiser: it turns a heap (a list
  of immediate and addressed items) into SPEAD packets laid out the way the
  reference spead2 lays them out, for heaps whose item pointers all fit in
  the first packet.
* :func:`parse_stream` decodes packets back into heaps, for assertions.
* :func:`run_reference` runs a snippet under the reference spead2 (a
  separate virtualenv, :mod:`refvenv`'s unless ``SPEAD2_REF_PYTHON`` says
  otherwise) and returns what it computed; :func:`reference_available` says
  whether that is possible.
"""

import importlib
import importlib.util
import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
import types

import spead_builder as sb
from spead_builder import HEAP_CNT_ID, HEAP_LENGTH_ID, NULL_ID, PAYLOAD_LENGTH_ID, PAYLOAD_OFFSET_ID

SOURCE_DIR = pathlib.Path(__file__).resolve().parent.parent / "python" / "spead2"
# The reference interpreter: SPEAD2_REF_PYTHON, else the cached virtualenv
# that tests/refvenv.py creates on demand (None if PyPI is unreachable).
def _find_reference():
    if os.environ.get("SPEAD2_REF_PYTHON"):
        return pathlib.Path(os.environ["SPEAD2_REF_PYTHON"])
    import refvenv

    found = refvenv.reference_python()
    return pathlib.Path(found) if found else None


REF_PYTHON = _find_reference()


def _reference_env():
    """No PYTHONPATH / LD_PRELOAD from our own test run (e.g. the ASAN stage)."""
    import refvenv

    return refvenv.clean_env()

# Values of the constants the send module imports from the compiled module.
CONSTANTS = {
    "NULL_ID": 0x00,
    "HEAP_CNT_ID": 0x01,
    "HEAP_LENGTH_ID": 0x02,
    "PAYLOAD_OFFSET_ID": 0x03,
    "PAYLOAD_LENGTH_ID": 0x04,
    "DESCRIPTOR_ID": 0x05,
    "STREAM_CTRL_ID": 0x06,
    "DESCRIPTOR_NAME_ID": 0x10,
    "DESCRIPTOR_DESCRIPTION_ID": 0x11,
    "DESCRIPTOR_SHAPE_ID": 0x12,
    "DESCRIPTOR_FORMAT_ID": 0x13,
    "DESCRIPTOR_ID_ID": 0x14,
    "DESCRIPTOR_DTYPE_ID": 0x15,
    "CTRL_STREAM_START": 0,
    "CTRL_DESCRIPTOR_REISSUE": 1,
    "CTRL_STREAM_STOP": 2,
    "CTRL_DESCRIPTOR_UPDATE": 3,
    "BUG_COMPAT_DESCRIPTOR_WIDTHS": 1,
    "BUG_COMPAT_SHAPE_BIT_1": 2,
    "BUG_COMPAT_SWAP_ENDIAN": 4,
    "BUG_COMPAT_PYSPEAD_0_5_2": 7,
}


# --------------------------------------------------------------------------
# Packetiser and decoder
# --------------------------------------------------------------------------
def _pointer(immediate, item_id, value, bits):
    return sb.item_pointer(item_id, value, immediate=immediate, heap_address_bits=bits)


def packetise(items, heap_cnt, heap_address_bits, max_packet_size=1472, repeat_pointers=False):
    """SPEAD packets (a list of bytes) for one heap.

    `items` is a list of ``(id, immediate, value)``: ``value`` is an int for
    immediates and bytes for addressed items.  Like the reference, a heap
    with no payload gets a one-byte ``NULL_ID`` item so that it has some.
    Only heaps whose item pointers fit in the first packet are supported.
    """
    bits = heap_address_bits
    items = list(items)
    payload = bytearray()
    pointers = []
    for item_id, immediate, value in items:
        if immediate:
            pointers.append(_pointer(True, item_id, value, bits))
        else:
            pointers.append(_pointer(False, item_id, len(payload), bits))
            payload += value
    if not payload:
        pointers.append(_pointer(False, NULL_ID, 0, bits))
        payload += b"\0"
    heap_length = len(payload)
    header_room = 8 + 8 * 4
    if header_room + 8 * len(pointers) >= max_packet_size:
        raise ValueError("too many item pointers for the test packetiser")
    packets = []
    offset = 0
    first = True
    while first or offset < heap_length:
        extra = pointers if (first or repeat_pointers) else []
        room = max_packet_size - header_room - 8 * len(extra)
        chunk = bytes(payload[offset : offset + room])
        packets.append(sb.make_packet(heap_cnt, heap_length, offset, chunk, heap_address_bits=bits,
                                      extra_pointers=b"".join(extra)))
        offset += len(chunk)
        first = False
    return packets


class ParsedHeap:
    """A heap decoded by :func:`parse_stream`."""

    def __init__(self, cnt):
        self.cnt = cnt
        self.items = []  # (id, immediate, raw value or offset)
        self.payload = bytearray()
        self.length = None

    def item_list(self):
        """``[(id, value)]`` with immediates as ints and addressed items as bytes.

        Addressed items are assumed to be laid out in pointer order (as
        senders do), so each ends where the next addressed item starts.
        """
        offsets = [value for _, imm, value in self.items if not imm] + [len(self.payload)]
        out = []
        k = 0
        for item_id, immediate, value in self.items:
            if immediate:
                out.append((item_id, value))
            else:
                out.append((item_id, bytes(self.payload[value : offsets[k + 1]])))
                k += 1
        return out


def parse_stream(data, heap_address_bits):
    """Decode concatenated packets (a BytesStream value) into ParsedHeap objects."""
    bits = heap_address_bits
    heaps = {}
    order = []
    pos = 0
    while pos < len(data):
        magic, version, id_bytes, addr_bytes, _, n_items = struct.unpack_from(">BBBBHH", data, pos)
        assert (magic, version) == (0x53, 4), "bad header"
        assert addr_bytes * 8 == bits and id_bytes + addr_bytes == 8
        pointers = struct.unpack_from(f">{n_items}Q", data, pos + 8)
        fields = {}
        rest = []
        for p in pointers:
            immediate = bool(p >> 63)
            item_id = (p >> bits) & ((1 << (63 - bits)) - 1)
            value = p & ((1 << bits) - 1)
            if item_id in (HEAP_CNT_ID, HEAP_LENGTH_ID, PAYLOAD_OFFSET_ID, PAYLOAD_LENGTH_ID):
                fields[item_id] = value
            else:
                rest.append((item_id, immediate, value))
        start = pos + 8 + 8 * n_items
        length = fields[PAYLOAD_LENGTH_ID]
        cnt = fields[HEAP_CNT_ID]
        heap = heaps.get(cnt)
        if heap is None:
            heap = heaps[cnt] = ParsedHeap(cnt)
            order.append(cnt)
        if not heap.items:
            heap.items = rest
        heap.length = fields[HEAP_LENGTH_ID]
        offset = fields[PAYLOAD_OFFSET_ID]
        if len(heap.payload) < offset + length:
            heap.payload.extend(bytes(offset + length - len(heap.payload)))
        heap.payload[offset : offset + length] = data[start : start + length]
        pos = start + length
    return [heaps[c] for c in order]


# --------------------------------------------------------------------------
# Fake compiled backend (the contract of spead2._spead2.send)
# --------------------------------------------------------------------------
class FakeHeap:
    """Pure-Python ``_Heap``: records items; packetised by FakeBytesStream."""

    def __init__(self, heap_address_bits):
        self.heap_address_bits = int(heap_address_bits)
        self.items = []
        self.repeat_pointers = False

    def add_immediate(self, id, value):
        value = int(value)
        if not 0 <= value < 1 << self.heap_address_bits:
            raise ValueError("immediate value out of range")
        self.items.append((int(id), True, value))

    def add_item_bytes(self, id, data):
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("data must be C-contiguous")
        self.items.append((int(id), False, view.tobytes()))

    @property
    def _n_items(self):
        return len(self.items)


class FakeStreamConfig:
    DEFAULT_MAX_PACKET_SIZE = 1472
    DEFAULT_RATE = 0.0
    DEFAULT_BURST_SIZE = 65536
    DEFAULT_MAX_HEAPS = 4
    DEFAULT_BURST_RATE_RATIO = 1.05

    def __init__(self, max_packet_size=1472, rate=0.0, burst_size=65536, max_heaps=4, burst_rate_ratio=1.05):
        self.max_packet_size = max_packet_size
        self.rate = rate
        self.burst_size = burst_size
        self.max_heaps = max_heaps
        self.burst_rate_ratio = burst_rate_ratio


class FakeBytesStream:
    def __init__(self, thread_pool=None, config=None):
        self.config = config if config is not None else FakeStreamConfig()
        self._data = bytearray()
        self._next_cnt = 1

    def send_heap(self, heap, cnt=-1, substream_index=0, rate=-1.0):
        if not isinstance(heap, FakeHeap):
            raise TypeError(f"send_heap needs a _Heap, not {type(heap).__name__}")
        if cnt < 0:
            cnt = self._next_cnt
            self._next_cnt += 1
        packets = packetise(
            heap.items, cnt, heap.heap_address_bits, self.config.max_packet_size, heap.repeat_pointers
        )
        for packet in packets:
            self._data += packet
        return sum(len(p) for p in packets)

    def getvalue(self):
        return bytes(self._data)

    # What spead2.send.asyncio needs of a compiled stream (serial groups only).
    def _reserve(self, n):
        pass

    def _send_reserved(self, heaps, mode):
        return sum(FakeBytesStream.send_heap(self, getattr(ref.heap, "_heap", ref.heap), ref.cnt, ref.substream_index)
                   for ref in heaps.refs)


class FakeHeapReference:
    def __init__(self, heap, *, cnt=-1, substream_index=0, rate=-1.0):
        self.heap, self.cnt, self.substream_index, self.rate = heap, cnt, substream_index, rate


class FakeHeapReferenceList:
    def __init__(self, heaps):
        self.refs = list(heaps)

    def __len__(self):
        return len(self.refs)


class FakeGroupMode:
    ROUND_ROBIN = 0
    SERIAL = 1


def make_fake_spead2_module():
    """A stand-in for ``spead2._spead2`` with constants and a ``send`` submodule."""
    core = types.ModuleType("_spead2_fake_core")
    core.__dict__.update(CONSTANTS)
    send = types.ModuleType("_spead2_fake_core.send")
    send._Heap = FakeHeap
    send.StreamConfig = FakeStreamConfig
    send.BytesStream = FakeBytesStream
    send.HeapReference = FakeHeapReference
    send.HeapReferenceList = FakeHeapReferenceList
    send.GroupMode = FakeGroupMode
    send._ManualClock = type("FakeManualClock", (), {})
    core.send = send
    return core


# --------------------------------------------------------------------------
# Loading the modules under test
# --------------------------------------------------------------------------
def _load_file(name, path, package=None, is_package=False):
    kwargs = {"submodule_search_locations": [str(path.parent)]} if is_package else {}
    spec = importlib.util.spec_from_file_location(name, path, **kwargs)
    module = importlib.util.module_from_spec(spec)
    if package is not None:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def use_source():
    """Whether to test the source tree's Python files instead of the installed
    ones (``SPEAD2_TEST_SOURCE=1``; the compiled core is the installed one)."""
    return os.environ.get("SPEAD2_TEST_SOURCE", "") not in ("", "0")


def load_items():
    """``spead2._items``: installed if present (and not :func:`use_source`),
    else loaded from source."""
    if not use_source():
        try:
            return importlib.import_module("spead2._items")
        except ImportError:
            pass
    name = "_spead2_src_items"
    if name in sys.modules:
        return sys.modules[name]
    return _load_file(name, SOURCE_DIR / "_items.py")


def compiled_send_available():
    try:
        core = importlib.import_module("spead2._spead2")
    except ImportError:
        return False
    return hasattr(core, "send") and hasattr(core.send, "_Heap")


def _load_source_package(package, core):
    """Load ``python/spead2/{_items,send}`` as package `package` over `core`
    (a module standing in for ``spead2._spead2``); returns the send module."""
    full = f"{package}.send"
    if full in sys.modules:
        return sys.modules[full]
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(SOURCE_DIR)]
    pkg.__package__ = package
    sys.modules[package] = pkg
    sys.modules[f"{package}._spead2"] = core
    pkg._spead2 = core
    pkg.__dict__.update(CONSTANTS)
    items = _load_file(f"{package}._items", SOURCE_DIR / "_items.py", package=package)
    pkg._items = items
    for name in ("Flavour", "Descriptor", "Item", "ItemGroup"):
        setattr(pkg, name, getattr(items, name))
    send = _load_file(full, SOURCE_DIR / "send" / "__init__.py", package=full, is_package=True)
    pkg.send = send
    return send


def load_send(backend="fake"):
    """The ``spead2.send`` module to test.

    ``backend="compiled"``: the installed ``spead2.send`` — or, with
    :func:`use_source`, the source ``python/spead2/send`` over the installed
    compiled core.  ``backend="fake"``: the source package over the
    pure-Python fake backend.  Source packages are loaded under private
    names, so they do not clash with the installed ``spead2``.
    """
    if backend == "compiled":
        if use_source():
            return _load_source_package("_spead2_src_pkg", importlib.import_module("spead2._spead2"))
        return importlib.import_module("spead2.send")
    if backend != "fake":
        raise ValueError(backend)
    return _load_source_package("_spead2_fake_pkg", make_fake_spead2_module())


# --------------------------------------------------------------------------
# The reference implementation, in its own interpreter
# --------------------------------------------------------------------------
def reference_available():
    return REF_PYTHON is not None and REF_PYTHON.exists()


_REF_PRELUDE = """
import json, sys
import numpy as np
import spead2, spead2.send, spead2.recv
from spead2 import Flavour, Descriptor, Item
from spead2.send import Heap, ItemGroup
_tp = spead2.ThreadPool()

def raw_descriptor(descriptor, flavour):
    heap = spead2.send.Heap(flavour)
    heap.add_descriptor(descriptor)
    stream = spead2.send.BytesStream(_tp, spead2.send.StreamConfig(max_packet_size=65000))
    stream.send_heap(heap)
    data = stream.getvalue()
    n = int.from_bytes(data[6:8], 'big')
    return data[8 + 8 * n:]

def heap_bytes(heaps, max_packet_size=9000):
    stream = spead2.send.BytesStream(_tp, spead2.send.StreamConfig(max_packet_size=max_packet_size))
    for heap in heaps:
        stream.send_heap(heap)
    return stream.getvalue()

def decode(data, flavour):
    config = spead2.recv.StreamConfig(bug_compat=flavour.bug_compat)
    stream = spead2.recv.Stream(_tp, config)
    stream.add_buffer_reader(data)
    ig = spead2.ItemGroup()
    out = []
    for heap in stream:
        updated = ig.update(heap)
        got = {}
        for name, item in updated.items():
            value = item.value
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, bytes):
                value = value.decode('latin-1')
            got[name] = {
                'id': item.id, 'shape': list(item.shape) if item.shape is not None else None,
                'dtype': None if item.dtype is None else str(item.dtype),
                'format': None if item.format is None else [list(f) for f in item.format],
                'order': item.order, 'value': value, 'type': type(item.value).__name__,
            }
        out.append(got)
    return out

def hexs(b):
    return bytes(b).hex()

result = None
"""


def run_reference(code, timeout=120):
    """Run `code` under the reference spead2 and return its ``result`` (JSON)."""
    script = _REF_PRELUDE + textwrap.dedent(code) + "\nprint('@@RESULT@@' + json.dumps(result))\n"
    proc = subprocess.run(
        [str(REF_PYTHON), "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        env=_reference_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{proc.stderr}")
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    raise RuntimeError(f"reference printed no result:\n{proc.stdout}\n{proc.stderr}")


def reference_decode(data, heap_address_bits=40, bug_compat=0):
    """Feed `data` (concatenated packets) to the reference receiver.

    Returns, per heap, ``{name: {id, shape, dtype, format, order, value,
    type}}`` for the items that heap updated.
    """
    code = f"""
        result = decode(bytes.fromhex({bytes(data).hex()!r}), Flavour(4, 64, {heap_address_bits}, {bug_compat}))
    """
    return run_reference(code)


# --------------------------------------------------------------------------
# The same snippets, run against the code under test
# --------------------------------------------------------------------------
class Api(types.SimpleNamespace):
    """The classes under test, from one backend (see :func:`load_api`)."""


def load_api(backend="fake"):
    send = load_send(backend)
    package = send.__name__.rsplit(".", 1)[0]
    items = sys.modules[f"{package}._items"]
    if backend == "compiled":
        import spead2

        thread_pool = spead2.ThreadPool()
    else:
        thread_pool = None
    return Api(
        backend=backend,
        send=send,
        items=items,
        Flavour=items.Flavour,
        Descriptor=items.Descriptor,
        Item=items.Item,
        BaseItemGroup=items.ItemGroup,
        ItemGroup=send.ItemGroup,
        Heap=send.Heap,
        thread_pool=thread_pool,
    )


def run_local(code, api):
    """Run a :func:`run_reference` snippet against `api`; returns ``result``."""
    import numpy as np

    def raw_descriptor(descriptor, flavour):
        return descriptor.to_raw(flavour)

    def heap_bytes(heaps, max_packet_size=9000):
        stream = api.send.BytesStream(api.thread_pool, api.send.StreamConfig(max_packet_size=max_packet_size))
        for heap in heaps:
            stream.send_heap(heap)
        return stream.getvalue()

    namespace = {
        "np": np,
        "json": json,
        "Flavour": api.Flavour,
        "Descriptor": api.Descriptor,
        "Item": api.Item,
        "Heap": api.Heap,
        "ItemGroup": api.ItemGroup,
        "raw_descriptor": raw_descriptor,
        "heap_bytes": heap_bytes,
        "hexs": lambda b: bytes(b).hex(),
        "result": None,
    }
    exec(textwrap.dedent(code), namespace)
    # Round-trip through JSON so that results compare like the reference's.
    return json.loads(json.dumps(namespace["result"]))
