"""Heap payload memory: spead2.MemoryAllocator, MmapAllocator and MemoryPool,
used by heap streams through StreamConfig.memory_allocator.

The reference spead2 (in its own virtualenv, see refvenv.py) is the oracle
for what a user can observe: the constructors' signatures and errors, the
decoded values, and when the pool warns that it is empty (which shows when a
buffer was, or was not, reused).  Our private counters (``_reused``,
``_empty_hits``, ``_free_buffers``) show the reuse directly.
"""

import gc
import json
import logging
import threading
import time

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send

import refvenv

# Receives heaps in lock step (one sent, one taken and dropped) through an
# allocator, so that how many pool buffers are in use at once does not
# depend on timing, and reports the decoded values, every "memory pool is
# empty" warning and the statistics.  Runs unchanged under our package (in
# process) and the reference (in its virtualenv).  A last heap of a unique
# size through a pool with no free buffers logs a sentinel warning: once it
# has arrived, every earlier message has (log delivery is in order).
SCRIPT = r"""
import json, logging, sys, time
import numpy as np
import spead2, spead2.recv, spead2.send

SENTINEL_SIZE = 12345

class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

def make_allocator(kind, args):
    if kind == "pool":
        return spead2.MemoryPool(*args)
    if kind == "pool_mmap":
        return spead2.MemoryPool(*args, allocator=spead2.MmapAllocator(0, True))
    if kind == "mmap":
        return spead2.MmapAllocator(*args)
    if kind == "default":
        return spead2.MemoryAllocator()
    return None

def lock_step(thread_pool, allocator, sizes, n, descriptors_first=True):
    queue = spead2.InprocQueue()
    sender = spead2.send.InprocStream(thread_pool, [queue])
    ig = spead2.send.ItemGroup()
    for i, size in enumerate(sizes):
        ig.add_item(0x1000 + i, "x%d" % i, "", shape=(size,), dtype=np.uint8)
    config = spead2.recv.StreamConfig()
    if allocator is not None:
        config.memory_allocator = allocator
    stream = spead2.recv.Stream(thread_pool, config, spead2.recv.RingStreamConfig(heaps=1))
    stream.add_inproc_reader(queue)
    rig = spead2.ItemGroup()
    values = []
    for k in range(n):
        for i, size in enumerate(sizes):
            ig["x%d" % i].value = (np.arange(size) + 7 * k).astype(np.uint8)
        descriptors = "all" if (k == 0 and descriptors_first) else "none"
        sender.send_heap(ig.get_heap(descriptors=descriptors, data="all"))
        heap = stream.get()
        updated = rig.update(heap)
        values.append({name: rig[name].value.tobytes().hex() for name in sorted(updated)})
        del heap
    queue.stop()
    assert list(stream) == []
    return values, dict(stream.stats.items())

def run(kind, args, sizes, n):
    handler = Collect()
    logger = logging.getLogger("spead2")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    thread_pool = spead2.ThreadPool()
    allocator = make_allocator(kind, args)
    values, stats = lock_step(thread_pool, allocator, sizes, n)
    lock_step(thread_pool, spead2.MemoryPool(0, 1 << 20, 0, 0), [SENTINEL_SIZE], 1, False)
    sentinel = "allocating %d bytes" % SENTINEL_SIZE
    deadline = time.monotonic() + 30
    while not any(sentinel in m for m in handler.messages) and time.monotonic() < deadline:
        time.sleep(0.01)
    warnings = [m for m in handler.messages if "memory pool is empty" in m and sentinel not in m]
    logger.removeHandler(handler)
    return {"values": values, "stats": stats, "warnings": warnings,
            "sentinel": any(sentinel in m for m in handler.messages)}

if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))))
"""

SIZES = [1000, 24]          # heap 0 (with descriptors) is bigger than the others
N = 6

# kind, constructor arguments
CASES = {
    "none": ("none", []),
    "default": ("default", []),
    "mmap": ("mmap", []),
    "mmap_huge": ("mmap", [0, True]),
    "pool": ("pool", [0, 4096, 2, 0]),              # first heap warns, then buffers come back
    "pool_initial": ("pool", [0, 4096, 2, 2]),      # never empty
    "pool_no_free": ("pool", [0, 4096, 0, 0]),      # nothing kept: every heap warns
    "pool_out_of_range": ("pool", [2000, 4096, 2, 0]),   # every heap bypasses the pool
    "pool_first_bypasses": ("pool", [0, 1100, 1, 0]),    # only the descriptor heap bypasses it
    "pool_mmap": ("pool_mmap", [0, 4096, 1, 1]),
}


def ours(kind, args, sizes=SIZES, n=N):
    namespace = {"__name__": "pool_script"}
    exec(SCRIPT, namespace)
    return json.loads(json.dumps(namespace["run"](kind, args, sizes, n)))


def reference(kind, args, sizes=SIZES, n=N):
    result = refvenv.run_reference(SCRIPT, kind, json.dumps(args), json.dumps(sizes), str(n))
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def baseline():
    return ours("none", [])


@pytest.mark.parametrize("case", sorted(CASES))
def test_allocators_match_reference(case, baseline):
    """Decoded values, statistics and every "memory pool is empty" warning
    equal the reference's, and the values equal those received without an
    allocator."""
    kind, args = CASES[case]
    got = ours(kind, args)
    assert got["sentinel"]
    assert got["values"] == baseline["values"]
    assert got == reference(kind, args)


def test_pool_warnings_show_reuse():
    """What the reference cases above pin down, spelled out.  The values
    ItemGroup decodes are views of the heap's payload, so a heap's buffer
    comes back only when the next heap's values replace them: two buffers
    are in use before the first one returns."""
    assert ours("pool", [0, 4096, 2, 0])["warnings"] == [
        "memory pool is empty when allocating 1330 bytes",   # with descriptors
        "memory pool is empty when allocating 1024 bytes",
    ]
    assert ours("pool", [0, 4096, 2, 2])["warnings"] == []
    assert len(ours("pool", [0, 4096, 0, 0])["warnings"]) == N
    assert ours("pool", [2000, 4096, 2, 0])["warnings"] == []


# ------------------------------------------------------------------ reuse

def _payload_address(heap):
    """Address of the first addressed item's bytes (start of the payload)."""
    item = next(it for it in heap.get_items() if not it.is_immediate)
    return np.frombuffer(item, dtype=np.uint8).ctypes.data


def _lock_step_heaps(pool, n, size=2000):
    """Send n heaps one at a time; yield each received heap."""
    thread_pool = spead2.ThreadPool()
    queue = spead2.InprocQueue()
    sender = spead2.send.InprocStream(thread_pool, [queue])
    ig = spead2.send.ItemGroup()
    ig.add_item(0x1000, "x", "", shape=(size,), dtype=np.uint8)
    stream = spead2.recv.Stream(thread_pool, spead2.recv.StreamConfig(memory_allocator=pool),
                                spead2.recv.RingStreamConfig(heaps=1))
    stream.add_inproc_reader(queue)
    for k in range(n):
        ig["x"].value = np.full(size, k, np.uint8)
        sender.send_heap(ig.get_heap(descriptors="none", data="all"))
        yield stream.get()
    queue.stop()
    stream.stop()


def test_pool_buffers_are_reused():
    pool = spead2.MemoryPool(1024, 4096, 2, 2)
    pool.warn_on_empty = False
    assert pool._free_buffers == 2
    addresses = set()
    for k, heap in enumerate(_lock_step_heaps(pool, 20)):
        addresses.add(_payload_address(heap))
        item = next(it for it in heap.get_items() if not it.is_immediate)
        assert bytes(item) == bytes([k]) * 2000
        del heap, item
    assert len(addresses) <= 2          # only the two initial buffers were ever used
    assert pool._reused == 20
    assert pool._empty_hits == 0
    assert pool._free_buffers == 2


def test_pool_max_free_bounds_kept_buffers():
    pool = spead2.MemoryPool(0, 4096, 1, 0)
    pool.warn_on_empty = False
    held = list(_lock_step_heaps(pool, 5))    # all five alive at once: the pool runs dry
    assert pool._empty_hits == 5 and pool._reused == 0
    del held
    gc.collect()
    assert pool._free_buffers == 1            # the other four were freed


def test_heap_outlives_pool_and_stream():
    pool = spead2.MemoryPool(0, 4096, 4, 1)
    heaps = list(_lock_step_heaps(pool, 3, size=100))
    del pool
    gc.collect()
    for k, heap in enumerate(heaps):
        item = next(it for it in heap.get_items() if not it.is_immediate)
        assert bytes(item) == bytes([k]) * 100


def test_refill_thread_tops_up():
    """With a thread pool, the pool refills itself to low_water in the
    background (the reference's Python binding of this form cannot be called:
    see doc/differences.rst)."""
    thread_pool = spead2.ThreadPool()
    pool = spead2.MemoryPool(thread_pool, 0, 4096, 8, 0, 4)
    deadline = time.monotonic() + 30
    while pool._free_buffers < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool._free_buffers == 4            # low_water, not max_free
    pool.warn_on_empty = False
    held = list(_lock_step_heaps(pool, 6))    # drains it; the refill keeps adding
    assert len(held) == 6
    del held
    gc.collect()
    deadline = time.monotonic() + 30
    while pool._free_buffers < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 4 <= pool._free_buffers <= 8


def test_warning_can_be_switched_off(caplog):
    pool = spead2.MemoryPool(0, 4096, 0, 0)
    assert pool.warn_on_empty is True
    pool.warn_on_empty = False
    assert pool.warn_on_empty is False
    with caplog.at_level(logging.WARNING, logger="spead2"):
        for heap in _lock_step_heaps(pool, 3):
            del heap
    assert pool._empty_hits == 3
    assert not [r for r in caplog.records if "memory pool is empty" in r.getMessage()]


def test_allocation_failure_drops_the_packet(caplog):
    """An allocator that fails (mmap with impossible flags) makes the stream
    drop the packets of that heap with a warning, leaving no heap behind;
    nothing crashes."""
    alloc = spead2.MmapAllocator(flags=-1)
    with caplog.at_level(logging.WARNING, logger="spead2"):
        thread_pool = spead2.ThreadPool()
        queue = spead2.InprocQueue()
        sender = spead2.send.InprocStream(thread_pool, [queue])
        ig = spead2.send.ItemGroup()
        ig.add_item(0x1000, "x", "", shape=(100,), dtype=np.uint8, value=np.zeros(100, np.uint8))
        sender.send_heap(ig.get_heap(descriptors="none"))
        queue.stop()
        stream = spead2.recv.Stream(thread_pool, spead2.recv.StreamConfig(memory_allocator=alloc),
                                    spead2.recv.RingStreamConfig(contiguous_only=False))
        stream.add_inproc_reader(queue)
        heaps = list(stream)
        deadline = time.monotonic() + 30
        while not any("could not allocate" in r.getMessage() for r in caplog.records) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stream.stats["packets"] == 1
    assert heaps == []
    assert stream.stats["heaps"] == 0
    assert any("could not allocate" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ API

SIGNATURES = r"""
import json, spead2, spead2.recv
out = {}
def attempt(name, f):
    try:
        obj = f()
        out[name] = ["ok", type(obj).__name__, getattr(obj, "warn_on_empty", None)]
    except Exception as e:
        out[name] = [type(e).__name__]
tp = spead2.ThreadPool()
attempt("pool", lambda: spead2.MemoryPool(1, 2, 3, 4))
attempt("pool_kw", lambda: spead2.MemoryPool(lower=1, upper=2, max_free=3, initial=4, allocator=None))
attempt("pool_lower_gt_upper", lambda: spead2.MemoryPool(10, 2, 3, 4))
attempt("pool_initial_gt_max_free", lambda: spead2.MemoryPool(1, 2, 3, 5))
attempt("pool_zero", lambda: spead2.MemoryPool(0, 0, 0, 0))
attempt("pool_negative", lambda: spead2.MemoryPool(-1, 2, 3, 4))
attempt("pool_too_few", lambda: spead2.MemoryPool(1, 2, 3))
attempt("pool_none", lambda: spead2.MemoryPool())
attempt("pool_bad_allocator", lambda: spead2.MemoryPool(1, 2, 3, 4, allocator=5))
attempt("pool_mmap", lambda: spead2.MemoryPool(1, 2, 3, 4, spead2.MmapAllocator()))
attempt("pool_pool", lambda: spead2.MemoryPool(1, 2, 3, 4, spead2.MemoryPool(1, 2, 3, 4)))
attempt("pool_tp_none", lambda: spead2.MemoryPool(None, 1, 2, 3, 4, 0))
attempt("mmap", lambda: spead2.MmapAllocator())
attempt("mmap_args", lambda: spead2.MmapAllocator(0, True))
attempt("mmap_kw", lambda: spead2.MmapAllocator(flags=1, prefer_huge=True))
attempt("mmap_negative", lambda: spead2.MmapAllocator(-1))
attempt("mmap_huge_flags", lambda: spead2.MmapAllocator(flags=2**40))
attempt("default", lambda: spead2.MemoryAllocator())
attempt("default_args", lambda: spead2.MemoryAllocator(1))
attempt("config_bad", lambda: spead2.recv.StreamConfig(memory_allocator=5))
attempt("config_none", lambda: spead2.recv.StreamConfig(memory_allocator=None))
out["subclasses"] = [issubclass(spead2.MemoryPool, spead2.MemoryAllocator),
                     issubclass(spead2.MmapAllocator, spead2.MemoryAllocator)]
pool = spead2.MemoryPool(1, 2, 3, 4)
out["same_object"] = spead2.recv.StreamConfig(memory_allocator=pool).memory_allocator is pool
pool.warn_on_empty = False
out["warn_off"] = pool.warn_on_empty
pool.warn_on_empty = 3
out["warn_int"] = pool.warn_on_empty
print(json.dumps(out))
"""


def test_constructors_and_errors_match_reference():
    namespace = {}
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(SIGNATURES, namespace)
    got = json.loads(buf.getvalue())
    ref = json.loads(refvenv.run_reference(SIGNATURES).stdout)
    assert got == ref


def test_thread_pool_form():
    """The refill form (ours works; the reference's binding rejects every call)."""
    tp = spead2.ThreadPool()
    pool = spead2.MemoryPool(tp, 0, 4096, 2, 1, 1)
    assert isinstance(pool, spead2.MemoryAllocator)
    pool = spead2.MemoryPool(thread_pool=tp, lower=0, upper=4096, max_free=2, initial=0, low_water=1,
                             allocator=spead2.MmapAllocator())
    with pytest.raises(TypeError):
        spead2.MemoryPool(tp, 0, 4096, 2, 1)          # low_water missing
    with pytest.raises(TypeError):
        spead2.MemoryPool(tp, -1, 4096, 2, 1, 1)


def test_pool_shared_by_streams_in_threads():
    """One pool serving several streams on several threads at once."""
    pool = spead2.MemoryPool(0, 4096, 4, 4)
    pool.warn_on_empty = False
    errors = []

    def worker():
        try:
            for k, heap in enumerate(_lock_step_heaps(pool, 50, size=500)):
                item = next(it for it in heap.get_items() if not it.is_immediate)
                assert bytes(item) == bytes([k]) * 500
                del heap, item
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool._reused + pool._empty_hits == 200
    assert pool._free_buffers == 4
