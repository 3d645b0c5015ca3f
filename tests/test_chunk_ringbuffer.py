"""spead2.recv.ChunkRingbuffer on its own (no stream)."""

import gc
import select
import sys
import threading
import time
import weakref

import numpy as np
import pytest

import spead2
from spead2.recv import Chunk, ChunkRingbuffer

pytestmark = pytest.mark.timeout(30)


class MyChunk(Chunk):
    def __init__(self, label, **kwargs):
        super().__init__(**kwargs)
        self.label = label


def make_chunk(label="a", size=16):
    return MyChunk(label, present=np.zeros(4, np.uint8), data=np.arange(size, dtype=np.uint8),
                   extra=np.zeros(2, np.int64))


def readable(fd):
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


# Every ring test runs with a consumer that sleeps at once and with one that
# polls first (spin_us), which must behave the same.
@pytest.fixture(params=[0, 200], ids=["sleep", "spin"])
def ring(request):
    return ChunkRingbuffer(3, spin_us=request.param)


class TestChunkRingbuffer:
    def test_spin_us(self):
        assert ChunkRingbuffer(2).spin_us == 0
        assert ChunkRingbuffer(2, spin_us=150).spin_us == 150
        assert ChunkRingbuffer(2, spin_us=0.5).spin_us == 0.5
        assert ChunkRingbuffer(2, spin_us=10000).spin_us == 10000

    @pytest.mark.parametrize("bad", [-1, 10001, float("nan"), float("inf")])
    def test_spin_us_out_of_range(self, bad):
        with pytest.raises(ValueError, match="spin_us must be between 0 and 10000"):
            ChunkRingbuffer(2, spin_us=bad)

    def test_spin_us_is_keyword_only(self):
        with pytest.raises(TypeError):
            ChunkRingbuffer(2, 100)

    def test_spin_ends_when_item_arrives(self):
        """A get() polling for longer than the producer takes returns the item."""
        ring = ChunkRingbuffer(2, spin_us=10000)
        chunk = make_chunk("soon")
        thread = threading.Thread(target=lambda: (time.sleep(0.001), ring.put(chunk)))
        thread.start()
        assert ring.get() is chunk
        thread.join(5)

    def test_zero_capacity(self):
        with pytest.raises(ValueError):
            ChunkRingbuffer(0)

    def test_missing_buffers(self, ring):
        with pytest.raises(ValueError):
            ring.put(MyChunk("x", present=np.zeros(4, np.uint8)))
        with pytest.raises(ValueError):
            ring.put(MyChunk("x", data=np.zeros(4, np.uint8)))
        with pytest.raises(ValueError):
            ring.put_nowait(MyChunk("x", data=np.zeros(4, np.uint8)))
        assert ring.qsize() == 0

    def test_extra_optional(self, ring):
        chunk = MyChunk("x", present=np.zeros(4, np.uint8), data=np.zeros(4, np.uint8))
        ring.put(chunk)
        assert ring.get() is chunk
        assert chunk.extra is None

    # Regression (fixed): put/put_nowait of an object that is not a Chunk raise pybind11's
    # internal cast error (RuntimeError "Unable to cast Python instance of type
    # <class 'numpy.ndarray'> to C++ type '?'") instead of a TypeError, because
    # ring_put/ring_put_nowait (src/bindings/register_recv_chunk.cpp) take py::handle
    # and cast it to chunk_object& by hand.  Reproduction:
    #     spead2.recv.ChunkRingbuffer(2).put(numpy.zeros(4, numpy.uint8))
    @pytest.mark.parametrize("method", ["put", "put_nowait"])
    def test_not_a_chunk(self, ring, method):
        with pytest.raises(TypeError):
            getattr(ring, method)(np.zeros(4, np.uint8))

    def test_none_is_not_a_chunk(self, ring):
        with pytest.raises(TypeError):
            ring.put(None)

    def test_qsize(self, ring):
        assert ring.maxsize == 3
        assert ring.qsize() == 0
        assert ring.empty() and not ring.full()
        for i in range(3):
            ring.put(make_chunk(str(i)))
            assert ring.qsize() == i + 1
            assert not ring.empty()
        assert ring.full()
        for i in range(3):
            ring.get()
            assert ring.qsize() == 2 - i
            assert not ring.full()
        assert ring.empty()

    @pytest.mark.parametrize("method", ["get", "get_nowait"])
    def test_stop(self, ring, method):
        ring.put(make_chunk("a"))
        ring.stop()
        assert getattr(ring, method)().label == "a"
        with pytest.raises(spead2.Stopped):
            getattr(ring, method)()

    def test_put_after_stop(self, ring):
        ring.stop()
        chunk = make_chunk()
        data = chunk.data
        with pytest.raises(spead2.Stopped):
            ring.put(chunk)
        with pytest.raises(spead2.Stopped):
            ring.put_nowait(chunk)
        # a failed put has no side effects
        assert chunk.data is data

    def test_stop_return_value(self, ring):
        # The reference returns True from every call (spec pitfall 9); all we
        # rely on is that the first call reports that it stopped the ring.
        assert ring.stop() is True

    def test_round_trip(self, ring):
        chunk = make_chunk("rt")
        data, present, extra = chunk.data, chunk.present, chunk.extra
        counts = [sys.getrefcount(x) for x in (data, present, extra)]
        ref = weakref.ref(chunk)
        chunk_count = sys.getrefcount(chunk)
        ring.put(chunk)
        # in flight: buffers are hidden
        assert chunk.data is None and chunk.present is None and chunk.extra is None
        out = ring.get()
        assert out is chunk
        assert out.label == "rt"
        assert out.data is data and out.present is present and out.extra is extra
        del out
        assert sys.getrefcount(chunk) == chunk_count
        assert [sys.getrefcount(x) for x in (data, present, extra)] == counts
        del chunk
        gc.collect()
        assert ref() is None

    def test_get_nowait(self, ring):
        with pytest.raises(spead2.Empty):
            ring.get_nowait()
        chunk = make_chunk()
        ring.put(chunk)
        assert ring.get_nowait() is chunk

    def test_put_nowait(self, ring):
        chunks = [make_chunk(c) for c in "abcd"]
        for c in chunks[:3]:
            ring.put_nowait(c)
        d = chunks[3]
        data, present = d.data, d.present
        with pytest.raises(spead2.Full):
            ring.put_nowait(d)
        assert d.data is data and d.present is present
        assert [ring.get_nowait().label for _ in range(3)] == ["a", "b", "c"]

    def test_iterate(self, ring):
        for c in "abc":
            ring.put(make_chunk(c))
        ring.stop()
        assert [c.label for c in ring] == ["a", "b", "c"]

    def test_iter_is_self(self, ring):
        assert iter(ring) is ring

    def test_block_get(self, ring):
        chunk = make_chunk("late")

        def put_later():
            time.sleep(0.1)
            ring.put(chunk)

        thread = threading.Thread(target=put_later)
        start = time.monotonic()
        thread.start()
        got = ring.get()
        elapsed = time.monotonic() - start
        thread.join(5)
        assert got is chunk
        assert elapsed >= 0.05

    def test_block_put(self, ring):
        for c in "abc":
            ring.put(make_chunk(c))
        results = []

        def put_blocked():
            ring.put(make_chunk("d"))
            results.append("done")

        thread = threading.Thread(target=put_blocked)
        thread.start()
        time.sleep(0.1)
        assert results == []
        assert ring.get().label == "a"
        thread.join(5)
        assert results == ["done"]
        assert [ring.get().label for _ in range(3)] == ["b", "c", "d"]

    def test_stop_wakes_blocked_get(self, ring):
        errors = []

        def consumer():
            try:
                ring.get()
            except spead2.Stopped:
                errors.append("stopped")

        thread = threading.Thread(target=consumer)
        thread.start()
        time.sleep(0.1)
        ring.stop()
        thread.join(5)
        assert not thread.is_alive()
        assert errors == ["stopped"]

    def test_stop_wakes_blocked_put(self, ring):
        for c in "abc":
            ring.put(make_chunk(c))
        errors = []
        blocked = make_chunk("blocked")
        data = blocked.data

        def producer():
            try:
                ring.put(blocked)
            except spead2.Stopped:
                errors.append("stopped")

        thread = threading.Thread(target=producer)
        thread.start()
        time.sleep(0.1)
        ring.stop()
        thread.join(5)
        assert errors == ["stopped"]
        assert blocked.data is data

    def test_add_remove_producer(self, ring):
        ring.add_producer()
        ring.add_producer()
        assert ring.remove_producer() is False
        with pytest.raises(spead2.Empty):
            ring.get_nowait()
        assert ring.remove_producer() is True
        with pytest.raises(spead2.Stopped):
            ring.get_nowait()

    def test_fds(self, ring):
        data_fd, space_fd = ring.data_fd, ring.space_fd
        assert data_fd >= 0 and space_fd >= 0 and data_fd != space_fd
        assert not readable(data_fd)
        assert readable(space_fd)
        for c in "abc":
            ring.put(make_chunk(c))
        assert readable(data_fd)
        assert not readable(space_fd)
        ring.get()
        assert readable(space_fd)
        ring.get()
        ring.get()
        assert not readable(data_fd)
        ring.stop()
        # once stopped, both are readable so that waiters wake up and see Stopped
        assert readable(data_fd)
        assert readable(space_fd)

    def test_fds_first_asked_for_late(self):
        """The eventfds are made when first asked for, and start in the ring's state then."""
        ring = ChunkRingbuffer(2)
        ring.put(make_chunk("a"))
        ring.put(make_chunk("b"))
        data_fd, space_fd = ring.data_fd, ring.space_fd
        assert readable(data_fd)
        assert not readable(space_fd)
        assert (ring.data_fd, ring.space_fd) == (data_fd, space_fd)   # made once
        ring.get()
        assert readable(space_fd)
        ring.get()
        assert not readable(data_fd)
        stopped = ChunkRingbuffer(2)
        stopped.stop()
        assert readable(stopped.data_fd)
        assert readable(stopped.space_fd)

    @pytest.mark.parametrize("spin_us", [0, 50, 10000])
    def test_many_threads(self, spin_us):
        """MPMC: every chunk comes out exactly once, per-producer order kept."""
        ring = ChunkRingbuffer(4, spin_us=spin_us)
        n_producers, per_producer = 3, 200
        got = []
        lock = threading.Lock()

        def producer(p):
            for i in range(per_producer):
                ring.put(make_chunk((p, i), size=1))

        def consumer():
            for chunk in ring:
                with lock:
                    got.append(chunk.label)

        producers = [threading.Thread(target=producer, args=(p,)) for p in range(n_producers)]
        consumers = [threading.Thread(target=consumer) for _ in range(2)]
        for t in producers + consumers:
            t.start()
        for t in producers:
            t.join(20)
        ring.stop()
        for t in consumers:
            t.join(20)
        assert sorted(got) == sorted((p, i) for p in range(n_producers) for i in range(per_producer))

    def test_fifo(self, ring):
        for label in "xyz":
            ring.put(make_chunk(label))
        assert [ring.get().label for _ in range(3)] == list("xyz")

    def test_freed_with_items(self):
        """Chunks still in a ring are released with it."""
        ring = ChunkRingbuffer(2)
        chunk = make_chunk()
        ref = weakref.ref(chunk)
        data_ref = weakref.ref(chunk.data) if hasattr(chunk.data, "__weakref__") else None
        ring.put(chunk)
        del chunk
        gc.collect()
        assert ref() is not None  # the ring holds it
        del ring
        gc.collect()
        assert ref() is None
        if data_ref is not None:
            assert data_ref() is None


class Interrupted(Exception):
    pass


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs setitimer")
@pytest.mark.parametrize("op", ["get", "put"])
def test_blocking_calls_are_interruptible(op):
    """A signal handler's exception (e.g. KeyboardInterrupt) ends a blocking get/put."""
    import signal

    ring = ChunkRingbuffer(1)
    if op == "put":
        ring.put(make_chunk("full"))
    blocked = make_chunk("blocked")
    data = blocked.data

    def handler(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            if op == "get":
                ring.get()
            else:
                ring.put(blocked)
        assert time.monotonic() - start < 20  # only a hang takes this long
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # an interrupted put leaves the chunk intact
    assert blocked.data is data
    assert ring.qsize() == (1 if op == "put" else 0)


def test_in_flight_buffer_cannot_be_resized():
    """While a chunk is in a ring its buffers stay exported, so they cannot be
    reallocated under the receiver's feet."""
    ring = ChunkRingbuffer(1)
    data = bytearray(16)
    chunk = MyChunk("b", present=bytearray(2), data=data)
    ring.put(chunk)
    with pytest.raises(BufferError):
        data.extend(b"more")
    out = ring.get()
    data.extend(b"more")  # released again
    assert len(out.data) == 20
