"""Shared fixtures: numba place callbacks (wrapped as scipy.LowLevelCallable).

The callbacks are compiled lazily (session-scoped fixtures), so test modules
that do not need numba neither pay for the compilation nor get skipped when
numba or scipy are missing; modules that do need them skip cleanly.
"""

import ctypes
import functools
import logging
import os

import numpy as np
import pytest

import spead2
from spead_builder import HEAP_PAYLOAD_SIZE, HEAPS_PER_CHUNK, PACKET_SIZE

try:
    import numba
    import scipy
    from numba import types

    from spead2.numba import intp_to_voidptr
    from spead2.recv import numba_place
    from spead2.recv.numba import chunk_place_data

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

PLAIN_SIGNATURE = "void (void *, size_t)"
BIND_SIGNATURE = "void (void *, size_t, void *)"

#: Items read by place_direct (the value of each tells the callback what to return).
DIRECT_ITEMS = [
    0x2000,  # chunk_id (absent: reject)
    0x2001,  # heap_index
    0x2002,  # heap_offset
    0x2003,  # extra_offset
    0x2004,  # extra_size
    0x2005,  # if present: heap_offset = -value (wraps around in size_t)
]
#: At most this many bytes are written to the extra scratch by place_direct.
DIRECT_EXTRA_WRITE = 8
DIRECT_EXTRA_BYTE = 0xC0

BIND_DTYPE = np.dtype([("scale", np.int64), ("placed_heaps_index", np.uintp)])


def _need_numba():
    if not HAVE_NUMBA:
        pytest.skip("numba and scipy are needed for place callbacks")


def _compile_callbacks(names=None):
    """Compile the named cfuncs (default: all); returns a dict of name -> cfunc."""
    place_ptr = types.CPointer(chunk_place_data)
    bind_record = types.Record.make_c_struct([
        ("scale", types.int64),
        ("placed_heaps_index", types.uintp),
    ])

    plain_sig = types.void(place_ptr, types.size_t)

    def place_extra(data_ptr, data_size):
        # items: [position, HEAP_LENGTH, extra value]; writes the extra value
        # as an int64 into chunk.extra[heap_index].
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
        position = items[0]
        if position >= 0 and items[1] == HEAP_PAYLOAD_SIZE:
            data[0].chunk_id = position // HEAPS_PER_CHUNK
            data[0].heap_index = position % HEAPS_PER_CHUNK
            data[0].heap_offset = data[0].heap_index * HEAP_PAYLOAD_SIZE
            extra = numba.carray(intp_to_voidptr(data[0].extra), 1, dtype=np.int64)
            extra[0] = items[2]
            data[0].extra_offset = data[0].heap_index * 8
            data[0].extra_size = 8

    def place_bind(data_ptr, data_size, user_data_ptr):
        # items: [position, HEAP_LENGTH, PAYLOAD_LENGTH]; heap_index is scaled
        # by user_data.scale, and the custom stat at user_data.placed_heaps_index
        # counts the heaps placed.
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
        user_data = numba.carray(user_data_ptr, 1)
        position = items[0]
        if position >= 0 and items[1] == HEAP_PAYLOAD_SIZE and items[2] == PACKET_SIZE:
            data[0].chunk_id = position // HEAPS_PER_CHUNK
            index = position % HEAPS_PER_CHUNK
            data[0].heap_index = index * user_data[0].scale
            data[0].heap_offset = index * HEAP_PAYLOAD_SIZE
            stats = numba.carray(intp_to_voidptr(data[0].batch_stats), user_data[0].placed_heaps_index + 1,
                                 dtype=np.uint64)
            stats[user_data[0].placed_heaps_index] += 1

    def place_direct(data_ptr, data_size):
        # The heap says, through immediates (DIRECT_ITEMS), where it goes.
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 6, dtype=np.int64)
        if items[0] < 0:
            return
        data[0].chunk_id = items[0]
        if items[1] >= 0:
            data[0].heap_index = items[1]
        if items[2] >= 0:
            data[0].heap_offset = items[2]
        if items[5] >= 0:
            data[0].heap_offset = np.uint64(0) - np.uint64(items[5])
        if items[4] >= 0:
            data[0].extra_size = items[4]
            if items[3] >= 0:
                data[0].extra_offset = items[3]
            if data[0].extra != 0:
                n = min(items[4], DIRECT_EXTRA_WRITE)
                extra = numba.carray(intp_to_voidptr(data[0].extra), DIRECT_EXTRA_WRITE, dtype=np.uint8)
                for i in range(n):
                    extra[i] = DIRECT_EXTRA_BYTE + i

    def place_bias(data_ptr, data_size, user_data_ptr):
        # items: [position, HEAP_LENGTH]; chunk_id is offset by the int64 the
        # user data points to (so chunk IDs can be made large).
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 2, dtype=np.int64)
        bias = numba.carray(user_data_ptr, 1)
        position = items[0]
        if position >= 0 and items[1] == HEAP_PAYLOAD_SIZE:
            data[0].chunk_id = position // HEAPS_PER_CHUNK + bias[0]
            data[0].heap_index = position % HEAPS_PER_CHUNK
            data[0].heap_offset = data[0].heap_index * HEAP_PAYLOAD_SIZE

    table = {
        "place_extra": (place_extra, plain_sig),
        "place_bind": (place_bind, types.void(place_ptr, types.size_t, types.CPointer(bind_record))),
        "place_direct": (place_direct, plain_sig),
        "place_bias": (place_bias, types.void(place_ptr, types.size_t, types.CPointer(types.int64))),
    }
    if names is None:
        names = ["place_plain", *table]
    out = {}
    for name in names:
        if name == "place_plain":
            # items: [position, HEAP_LENGTH]: the standard heap-counter
            # callback, counting from position 0.
            out[name] = numba_place.heap_counter(heap_size=HEAP_PAYLOAD_SIZE, heaps_per_chunk=HEAPS_PER_CHUNK,
                                                 cnt_first=0).cfunc
        else:
            out[name] = numba.cfunc(table[name][1], nopython=True)(table[name][0])
    return out


class _LazyCallbacks:
    """name -> compiled cfunc, compiling each one on first use."""

    def __init__(self):
        self._compiled = {}

    def __getitem__(self, name):
        if name not in self._compiled:
            self._compiled.update(_compile_callbacks([name]))
        return self._compiled[name]


@pytest.fixture(scope="session")
def callbacks():
    _need_numba()
    return _LazyCallbacks()


def _plain_llc(cfunc):
    return scipy.LowLevelCallable(cfunc.ctypes, signature=PLAIN_SIGNATURE)


def _bind_llc(cfunc, user_data):
    """LowLevelCallable with a user-data pointer; the caller keeps user_data alive."""
    return scipy.LowLevelCallable(cfunc.ctypes, ctypes.c_void_p(user_data.ctypes.data), BIND_SIGNATURE)


@pytest.fixture(scope="session")
def place_plain_llc(callbacks):
    return _plain_llc(callbacks["place_plain"])


@pytest.fixture(scope="session")
def place_extra_llc(callbacks):
    return _plain_llc(callbacks["place_extra"])


@pytest.fixture(scope="session")
def place_direct_llc(callbacks):
    return _plain_llc(callbacks["place_direct"])


class _Bound:
    """Holds a LowLevelCallable together with the memory its user data points to."""

    def __init__(self, llc, user_data):
        self.llc = llc
        self.user_data = user_data


@pytest.fixture
def make_place_bind(callbacks):
    """make_place_bind(scale, placed_heaps_index) -> object with .llc (and .user_data)."""

    def make(scale, placed_heaps_index):
        user_data = np.zeros(1, dtype=BIND_DTYPE)
        user_data["scale"] = scale
        user_data["placed_heaps_index"] = placed_heaps_index
        return _Bound(_bind_llc(callbacks["place_bind"], user_data), user_data)

    return make


@pytest.fixture
def make_place_bias(callbacks):
    """make_place_bias(bias) -> object with .llc: chunk_id = position // 10 + bias."""

    def make(bias):
        user_data = np.array([bias], dtype=np.int64)
        return _Bound(_bind_llc(callbacks["place_bias"], user_data), user_data)

    return make


@functools.lru_cache(maxsize=None)
def _capture_placement(ts0, ts_step, freq_step, n_freq, heap_size):
    # The standard timestamp × channel callback, one timestamp per chunk
    # (compiled once per layout).
    return numba_place.timestamp_channel(heap_size=heap_size, channels=n_freq, channel_step=freq_step,
                                         timestamp_step=ts_step, first_timestamp=ts0)


@pytest.fixture
def make_place_capture(callbacks):
    """make_place_capture(ts0, ts_step, freq_step, n_freq, heap_size) -> object with .llc
    (items: [timestamp, frequency, HEAP_LENGTH])."""

    def make(ts0, ts_step, freq_step, n_freq, heap_size):
        return _Bound(_capture_placement(ts0, ts_step, freq_step, n_freq, heap_size), None)

    return make


@pytest.fixture
def thread_pool():
    return spead2.ThreadPool()


class Received:
    """A copy of a chunk as it came out of the data ring."""

    def __init__(self, chunk):
        self.chunk_id = chunk.chunk_id
        self.stream_id = chunk.stream_id
        self.present = np.array(chunk.present, copy=True)
        self.data = np.array(chunk.data, copy=True)
        self.extra = None if chunk.extra is None else np.array(chunk.extra, copy=True)

    def heap(self, index, size=HEAP_PAYLOAD_SIZE):
        return self.data[index * size:(index + 1) * size].tobytes()

    def __repr__(self):
        return f"Received(chunk_id={self.chunk_id}, present={self.present.tolist()})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SPEAD2_EXPECT_IBV=1 (as scripts/test.sh sets), a skipped ibverbs
    test is a failure: CI must not pass because the emulated device or the
    ibverbs build went missing."""
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("SPEAD2_EXPECT_IBV") == "1" and report.skipped
            and item.nodeid.split("::")[0].endswith(("test_ibv.py", "test_ibv_tools.py"))):
        report.outcome = "failed"
        report.longrepr = f"ibverbs test skipped although SPEAD2_EXPECT_IBV=1: {report.longrepr}"


class CollectLog(logging.Handler):
    """Keeps every record logged to it (for the logging tests)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self):
        return [r.getMessage() for r in self.records]


@pytest.fixture
def spead2_log():
    """The records of the Python logger "spead2" during the test (level DEBUG);
    the log limits are reset afterwards."""
    logger = logging.getLogger("spead2")
    handler = CollectLog()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)
    spead2.set_log_limits()


@pytest.fixture(scope="session")
def emulator():
    """Path of the emulated RDMA NIC's library (tests/ibv_emulator), built once."""
    import emu_util

    return emu_util.build_emulator()
