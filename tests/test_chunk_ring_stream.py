"""Behaviour of spead2.recv.ChunkRingStream, fed with hand-built packets.

Layout (as in the reference's tests): 1024-byte heaps, two 512-byte packets
per heap, ten heaps per chunk, the heap's position in immediate item 0x1000.
Every stream first sees a descriptor-like heap (which the place callback
rejects) and, unless a test says otherwise, ends with a stop heap.
"""

import gc
import time
import weakref

import numpy as np
import pytest

import spead2
import spead2.recv

pytest.importorskip("numba")
pytest.importorskip("scipy")

from conftest import DIRECT_EXTRA_BYTE, DIRECT_ITEMS, Received  # noqa: E402
from spead_builder import (  # noqa: E402
    CHUNK_PAYLOAD_SIZE,
    DATA_ID,
    HEAP_PAYLOAD_SIZE,
    HEAPS_PER_CHUNK,
    MALFORMED_KINDS,
    PACKET_SIZE,
    POSITION_ID,
    EXTRA_ID,
    descriptor_heap,
    extra_value,
    heap_packets,
    heap_payload,
    make_packet,
    malformed_packet,
    pointers,
    position_heap,
    stop_heap,
)

pytestmark = pytest.mark.timeout(30)

STANDARD_ITEMS = [POSITION_ID, spead2.HEAP_LENGTH_ID, EXTRA_ID]
GUARD_BYTE = 0xEE


class Harness:
    """A ChunkRingStream on an InprocQueue, with chunks optionally surrounded
    by guard bytes (the chunk buffers are views into the middle of larger
    arrays filled with GUARD_BYTE)."""

    def __init__(
        self,
        place,
        *,
        items=STANDARD_ITEMS,
        config=None,
        max_chunks=4,
        max_heap_extra=8,
        presence=None,
        n_chunks=4,
        data_ring=4,
        free_ring=None,
        present_size=HEAPS_PER_CHUNK,
        data_size=CHUNK_PAYLOAD_SIZE,
        extra_size=HEAPS_PER_CHUNK * 8,
        guard=0,
        thread_pool=None,
        rings=None,
        chunk_class=spead2.recv.Chunk,
    ):
        self.thread_pool = thread_pool or spead2.ThreadPool()
        if config is None:
            config = spead2.recv.StreamConfig(max_heaps=128)
        chunk_config = spead2.recv.ChunkStreamConfig(
            items=items, max_chunks=max_chunks, place=place, max_heap_extra=max_heap_extra
        )
        if presence is not None:
            chunk_config.enable_packet_presence(presence)
        if rings is None:
            rings = (
                spead2.recv.ChunkRingbuffer(data_ring),
                spead2.recv.ChunkRingbuffer(free_ring or max(n_chunks, 1)),
            )
        self.data_ring, self.free_ring = rings
        self.stream = spead2.recv.ChunkRingStream(
            self.thread_pool, config, chunk_config, self.data_ring, self.free_ring
        )
        self.queue = spead2.InprocQueue()
        self.guard = guard
        self.stores = []
        self.chunks = []
        for _ in range(n_chunks):
            present_store = np.full(present_size + 2 * guard, GUARD_BYTE, np.uint8)
            data_store = np.full(data_size + 2 * guard, GUARD_BYTE, np.uint8)
            kwargs = dict(
                present=present_store[guard:guard + present_size],
                data=data_store[guard:guard + data_size],
            )
            stores = [present_store, data_store]
            if extra_size is not None:
                extra_store = np.full(extra_size + 2 * guard, GUARD_BYTE, np.uint8)
                extra = extra_store[guard:guard + extra_size]
                kwargs["extra"] = extra.view(np.int64) if extra_size % 8 == 0 else extra
                stores.append(extra_store)
            chunk = chunk_class(**kwargs)
            self.stores.append(stores)
            self.chunks.append(chunk)
            self.stream.add_free_chunk(chunk)
        self.stream.add_inproc_reader(self.queue)
        self.next_cnt = 1

    # --- sending
    def cnt(self):
        value = self.next_cnt
        self.next_cnt += 1
        return value

    def send(self, packets):
        for p in packets:
            self.queue.add_packet(p)

    def send_descriptor(self):
        self.send([descriptor_heap(self.cnt())])

    def send_positions(self, positions, **kwargs):
        for pos in positions:
            self.send(position_heap(pos, self.cnt(), **kwargs))

    def send_stop(self):
        self.send([stop_heap(self.cnt())])

    # --- receiving
    def collect(self, recycle=True):
        """Read the data ring until it stops; chunks are returned to the free ring."""
        out = []
        for chunk in self.data_ring:
            out.append(Received(chunk))
            if recycle:
                self.stream.add_free_chunk(chunk)
        return out

    def stats(self):
        return self.stream.stats

    def guards_intact(self):
        g = self.guard
        for stores in self.stores:
            for store in stores:
                if np.any(store[:g] != GUARD_BYTE) or np.any(store[len(store) - g:] != GUARD_BYTE):
                    return False
        return True


def run_positions(place, positions, **kwargs):
    """Send descriptor + heaps at `positions` + stop; return (chunks, stats)."""
    h = Harness(place, **kwargs)
    h.send_descriptor()
    h.send_positions(positions)
    h.send_stop()
    chunks = h.collect()
    return h, chunks


def check_chunk_contents(chunk, expect_positions, check_extra=False):
    """Present flags and payloads of `chunk` match exactly the given positions."""
    base = chunk.chunk_id * HEAPS_PER_CHUNK
    expected_present = np.zeros(HEAPS_PER_CHUNK, np.uint8)
    for pos in expect_positions:
        expected_present[pos - base] = 1
    np.testing.assert_array_equal(chunk.present, expected_present, err_msg=f"chunk {chunk.chunk_id}")
    for pos in expect_positions:
        assert chunk.heap(pos - base) == heap_payload(pos), f"payload of heap {pos}"
        if check_extra:
            assert chunk.extra[pos - base] == extra_value(pos)


# ---------------------------------------------------------------------------
# The reference's scenarios (spec §6.1), in our own words


class TestReferenceScenarios:
    @pytest.mark.parametrize("send_end", [True, False])
    def test_cleanup(self, place_plain_llc, send_end):
        """Lots of data and nobody consuming: stopping must neither hang nor crash."""
        h = Harness(place_plain_llc)
        h.send_descriptor()
        h.send_positions(range(1000))
        if send_end:
            h.send_stop()
        # Wait until the worker is stuck for lack of free chunks (it has
        # pushed the first chunk to the data ring by then).
        deadline = time.monotonic() + 10
        while h.data_ring.qsize() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.data_ring.qsize() >= 1
        h.stream.stop()
        # What was already queued can be drained; then the ring is stopped.
        drained = list(h.data_ring)
        assert [c.chunk_id for c in drained] == list(range(len(drained)))
        with pytest.raises(spead2.Stopped):
            h.data_ring.get()
        del h
        gc.collect()

    @pytest.mark.parametrize("variant", ["plain", "extra"])
    def test_basic(self, place_plain_llc, place_extra_llc, variant):
        place = place_plain_llc if variant == "plain" else place_extra_llc
        n_heaps = 103
        h, chunks = run_positions(place, range(n_heaps))
        n_chunks = (n_heaps + HEAPS_PER_CHUNK - 1) // HEAPS_PER_CHUNK
        assert [c.chunk_id for c in chunks] == list(range(n_chunks))
        for c in chunks:
            base = c.chunk_id * HEAPS_PER_CHUNK
            positions = [p for p in range(base, base + HEAPS_PER_CHUNK) if p < n_heaps]
            check_chunk_contents(c, positions, check_extra=(variant == "extra"))
        assert chunks[-1].present.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
        stats = h.stats()
        assert stats["rejected_heaps"] == 2  # descriptor + stop heap
        assert stats["too_old_heaps"] == 0
        assert stats["out_of_range_heaps"] == 0
        assert stats["malformed_packets"] == 0
        assert stats["packets"] == 2 * n_heaps + 2
        assert stats["heaps"] == n_heaps + 1  # the stop heap is not counted
        assert stats["incomplete_heaps_evicted"] == 0
        assert stats["incomplete_heaps_flushed"] == 0
        assert stats["single_packet_heaps"] == 2

    @pytest.mark.parametrize("heap_address_bits", [16, 24, 32, 40, 48])
    def test_flavours(self, place_plain_llc, heap_address_bits):
        h = Harness(place_plain_llc)
        h.send([descriptor_heap(h.cnt(), heap_address_bits=heap_address_bits)])
        h.send_positions(range(25), heap_address_bits=heap_address_bits)
        h.send([stop_heap(h.cnt(), heap_address_bits=heap_address_bits)])
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        check_chunk_contents(chunks[0], range(0, 10))
        check_chunk_contents(chunks[2], range(20, 25))

    @pytest.mark.parametrize("memcpy", [spead2.MEMCPY_STD, spead2.MEMCPY_NONTEMPORAL])
    @pytest.mark.parametrize("packet_size", [100, 333, 512, 1000])
    def test_copy_unaligned(self, place_plain_llc, memcpy, packet_size):
        """Odd packet sizes (unaligned source and destination) with each memcpy."""
        config = spead2.recv.StreamConfig(max_heaps=128, memcpy=memcpy)
        h = Harness(place_plain_llc, config=config)
        h.send_descriptor()
        h.send_positions(range(23), packet_size=packet_size)
        h.send_stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        for c in chunks:
            check_chunk_contents(c, [p for p in range(23) if p // HEAPS_PER_CHUNK == c.chunk_id])

    def test_out_of_order(self, place_plain_llc):
        positions = [37, 7, 27, 47, 17, 87, 57, 77, 67]
        h, chunks = run_positions(place_plain_llc, positions)
        assert [c.chunk_id for c in chunks] == list(range(9))
        for c in chunks:
            check_chunk_contents(c, [c.chunk_id * HEAPS_PER_CHUNK + 7])
        assert h.stats()["too_old_heaps"] == 0

    def test_jump(self, place_plain_llc):
        h, chunks = run_positions(place_plain_llc, [100, 200])
        assert [c.chunk_id for c in chunks] == [7, 8, 9, 10, 17, 18, 19, 20]
        for c in chunks:
            expect = [c.chunk_id * HEAPS_PER_CHUNK] if c.chunk_id in (10, 20) else []
            check_chunk_contents(c, expect)

    def test_heap_too_old(self, place_plain_llc):
        h, chunks = run_positions(place_plain_llc, [10, 20, 30, 40, 0])
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, 4]
        check_chunk_contents(chunks[0], [])
        for c in chunks[1:]:
            check_chunk_contents(c, [c.chunk_id * HEAPS_PER_CHUNK])
        stats = h.stats()
        assert stats["too_old_heaps"] == 1
        assert stats["rejected_heaps"] == 2

    def test_extra(self, place_extra_llc):
        positions = [3, 5, 14, 19, 28]
        h, chunks = run_positions(place_extra_llc, positions)
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        for c in chunks:
            base = c.chunk_id * HEAPS_PER_CHUNK
            mine = [p for p in positions if base <= p < base + HEAPS_PER_CHUNK]
            check_chunk_contents(c, mine, check_extra=True)

    def test_shared_ringbuffer(self, place_plain_llc):
        data_ring = spead2.recv.ChunkRingbuffer(4)
        free_ring = spead2.recv.ChunkRingbuffer(16)
        # Each stream holds up to max_chunks=4 chunks in its window: with ten
        # chunks in circulation neither can starve the other.
        a = Harness(place_plain_llc, rings=(data_ring, free_ring), n_chunks=5)
        b = Harness(
            place_plain_llc,
            rings=(data_ring, free_ring),
            n_chunks=5,
            config=spead2.recv.StreamConfig(max_heaps=128, stream_id=1),
        )
        a.send_descriptor()
        a.send_positions(range(0, 35))
        a.send_stop()
        n_a_packets = 2 * 35 + 2

        seen = {0: [], 1: []}

        def take(chunk):
            seen[chunk.stream_id].append(Received(chunk))
            a.stream.add_free_chunk(chunk)

        # Drain a's chunks; the ring must not stop when only a has finished.
        while len(seen[0]) < 4:
            take(data_ring.get())
        deadline = time.monotonic() + 10
        while a.stats()["packets"] < n_a_packets and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.stats()["packets"] == n_a_packets
        time.sleep(0.05)
        with pytest.raises(spead2.Empty):
            data_ring.get_nowait()

        b.send_descriptor()
        b.send_positions(range(0, 52))
        b.send_stop()
        for chunk in data_ring:
            take(chunk)
        assert [c.chunk_id for c in seen[0]] == [0, 1, 2, 3]
        assert [c.chunk_id for c in seen[1]] == [0, 1, 2, 3, 4, 5]
        for c in seen[0]:
            check_chunk_contents(c, [p for p in range(35) if p // HEAPS_PER_CHUNK == c.chunk_id])
        for c in seen[1]:
            check_chunk_contents(c, [p for p in range(52) if p // HEAPS_PER_CHUNK == c.chunk_id])

    def test_missing_place_callback(self, thread_pool):
        with pytest.raises(ValueError):
            spead2.recv.ChunkRingStream(
                thread_pool,
                spead2.recv.StreamConfig(),
                spead2.recv.ChunkStreamConfig(items=[POSITION_ID, spead2.HEAP_LENGTH_ID]),
                spead2.recv.ChunkRingbuffer(4),
                spead2.recv.ChunkRingbuffer(4),
            )

    def test_packet_too_old(self, place_plain_llc):
        """A heap whose chunk leaves the window while it is being received."""
        h = Harness(place_plain_llc)

        def packets(position):
            return position_heap(position, position + 1000)

        first, second = packets(0)
        h.send([first])
        for pos in range(40, 50):
            h.send(packets(pos))
        h.send([second])
        for pos in range(50, 60):
            h.send(packets(pos))
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, 4, 5]
        for c in chunks[:4]:
            check_chunk_contents(c, [])
        check_chunk_contents(chunks[4], range(40, 50))
        check_chunk_contents(chunks[5], range(50, 60))
        assert h.stats()["too_old_heaps"] == 1

    def test_packet_presence(self, make_place_bind):
        config = spead2.recv.StreamConfig(max_heaps=128, allow_out_of_order=True)
        stat_index = config.add_stat("placed_heaps")
        bound = make_place_bind(2, stat_index)
        h = Harness(
            bound.llc,
            items=[POSITION_ID, spead2.HEAP_LENGTH_ID, spead2.PAYLOAD_LENGTH_ID],
            config=config,
            presence=PACKET_SIZE,
            present_size=20,
        )
        heap4 = position_heap(4, 10)
        heap17 = position_heap(17, 11)
        h.send([heap4[0], heap4[1], heap17[1]])
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1]
        assert np.flatnonzero(chunks[0].present).tolist() == [8, 9]
        assert np.flatnonzero(chunks[1].present).tolist() == [15]
        assert chunks[0].heap(4) == heap_payload(4)
        assert chunks[1].data[7 * 1024 + 512:8 * 1024].tobytes() == heap_payload(17)[512:]
        assert h.stats()["placed_heaps"] == 2
        # heap 17 never completed: it was flushed when the queue stopped
        assert h.stats()["incomplete_heaps_flushed"] == 1


# ---------------------------------------------------------------------------
# Placement outside the chunk buffers: our extension (out_of_range_heaps)


def direct_heap(cnt, *, chunk_id=None, heap_index=None, heap_offset=None, extra_offset=None,
                extra_size=None, negative_offset=None, length=HEAP_PAYLOAD_SIZE, packet_size=PACKET_SIZE,
                seed=0):
    """A heap that tells place_direct where it goes."""
    values = [chunk_id, heap_index, heap_offset, extra_offset, extra_size, negative_offset]
    immediates = [(item, v) for item, v in zip(DIRECT_ITEMS, values) if v is not None]
    return heap_packets(cnt, heap_payload(seed, length), packet_size, immediates, [(DATA_ID, 0)])


class TestOutOfRange:
    GUARD = 64

    def make(self, place_direct_llc, **kwargs):
        kwargs.setdefault("guard", self.GUARD)
        kwargs.setdefault("max_heap_extra", 8)
        return Harness(place_direct_llc, items=DIRECT_ITEMS, **kwargs)

    def run(self, h, bad_heaps, good=True):
        """Send a good heap, the bad ones, another good heap, then stop."""
        h.send([descriptor_heap(h.cnt())])
        if good:
            h.send(direct_heap(h.cnt(), chunk_id=0, heap_index=0, heap_offset=0, seed=1))
        for kwargs in bad_heaps:
            h.send(direct_heap(h.cnt(), **kwargs))
        if good:
            h.send(direct_heap(h.cnt(), chunk_id=0, heap_index=1, heap_offset=HEAP_PAYLOAD_SIZE, seed=2))
        h.send_stop()
        return h.collect()

    def check_good(self, chunks):
        assert chunks[0].chunk_id == 0
        assert chunks[0].present[:2].tolist() == [1, 1]
        assert chunks[0].heap(0) == heap_payload(1)
        assert chunks[0].heap(1) == heap_payload(2)

    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(dict(heap_offset=CHUNK_PAYLOAD_SIZE - 512), id="offset_straddles_end"),
            pytest.param(dict(heap_offset=CHUNK_PAYLOAD_SIZE - 1023), id="offset_one_byte_over"),
            pytest.param(dict(heap_offset=CHUNK_PAYLOAD_SIZE), id="offset_at_end"),
            pytest.param(dict(heap_offset=1 << 40), id="offset_huge"),
            pytest.param(dict(negative_offset=512), id="offset_wraps_negative"),
            pytest.param(dict(heap_offset=0, heap_index=HEAPS_PER_CHUNK), id="index_at_end"),
            pytest.param(dict(heap_offset=0, heap_index=1 << 40), id="index_huge"),
            pytest.param(dict(heap_offset=0, heap_index=2, extra_size=8, extra_offset=HEAPS_PER_CHUNK * 8 - 4),
                         id="extra_straddles_end"),
            pytest.param(dict(heap_offset=0, heap_index=2, extra_size=8, extra_offset=HEAPS_PER_CHUNK * 8),
                         id="extra_at_end"),
            pytest.param(dict(heap_offset=0, heap_index=2, extra_size=8, extra_offset=1 << 40),
                         id="extra_offset_huge"),
            pytest.param(dict(heap_offset=0, heap_index=2, extra_size=9, extra_offset=0),
                         id="extra_size_over_max_heap_extra"),
        ],
    )
    def test_dropped(self, place_direct_llc, bad):
        h = self.make(place_direct_llc)
        bad = dict(chunk_id=0, seed=7, **bad)
        chunks = self.run(h, [bad])
        assert [c.chunk_id for c in chunks] == [0]
        self.check_good(chunks)
        # nothing of the bad heap was written: no presence, no extra
        assert chunks[0].present[2:].tolist() == [0] * (HEAPS_PER_CHUNK - 2)
        assert not np.any(chunks[0].extra.view(np.uint8) == DIRECT_EXTRA_BYTE)
        payload7 = heap_payload(7)
        assert payload7[:512] not in chunks[0].data.tobytes()
        assert h.guards_intact()
        stats = h.stats()
        assert stats["out_of_range_heaps"] == 1
        assert stats["rejected_heaps"] == 2
        assert stats["too_old_heaps"] == 0

    def test_extra_without_extra_buffer(self, place_direct_llc):
        """extra_size > 0 but the chunk has no extra buffer."""
        h = self.make(place_direct_llc, extra_size=None)
        chunks = self.run(h, [dict(chunk_id=0, heap_index=2, heap_offset=2048, extra_size=8, extra_offset=0)])
        self.check_good(chunks)
        assert chunks[0].present[2] == 0
        assert h.guards_intact()
        assert h.stats()["out_of_range_heaps"] == 1

    def test_extra_with_zero_max_heap_extra(self, place_direct_llc):
        """The callback claims extra data although max_heap_extra is 0 (no scratch)."""
        h = self.make(place_direct_llc, max_heap_extra=0)
        chunks = self.run(h, [dict(chunk_id=0, heap_index=2, heap_offset=2048, extra_size=4, extra_offset=0)])
        self.check_good(chunks)
        assert chunks[0].present[2] == 0
        assert h.guards_intact()
        assert h.stats()["out_of_range_heaps"] == 1

    def test_exact_fit_accepted(self, place_direct_llc):
        """Placements touching the last byte / last flag / last extra slot are fine."""
        h = self.make(place_direct_llc)
        chunks = self.run(h, [dict(chunk_id=0, heap_index=HEAPS_PER_CHUNK - 1,
                                   heap_offset=CHUNK_PAYLOAD_SIZE - HEAP_PAYLOAD_SIZE,
                                   extra_offset=HEAPS_PER_CHUNK * 8 - 8, extra_size=8, seed=9)])
        self.check_good(chunks)
        assert chunks[0].present[HEAPS_PER_CHUNK - 1] == 1
        assert chunks[0].heap(HEAPS_PER_CHUNK - 1) == heap_payload(9)
        extra = chunks[0].extra.view(np.uint8)
        assert extra[-8:].tolist() == [DIRECT_EXTRA_BYTE + i for i in range(8)]
        assert h.guards_intact()
        assert h.stats()["out_of_range_heaps"] == 0

    def test_unaligned_offset_accepted(self, place_direct_llc):
        """heap_offset need not be a multiple of anything."""
        h = self.make(place_direct_llc)
        chunks = self.run(h, [dict(chunk_id=0, heap_index=5, heap_offset=3 * 1024 + 13, seed=5)], good=False)
        assert chunks[0].present.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        assert chunks[0].data[3 * 1024 + 13:4 * 1024 + 13].tobytes() == heap_payload(5)
        assert h.guards_intact()

    @pytest.mark.parametrize(
        "heap_index, ok",
        [(HEAPS_PER_CHUNK * 2 - 2, True), (HEAPS_PER_CHUNK * 2 - 1, False), (HEAPS_PER_CHUNK * 2, False)],
    )
    def test_packet_presence_index(self, place_direct_llc, heap_index, ok):
        """With packet presence, every packet's flag must lie inside `present`."""
        h = self.make(place_direct_llc, presence=PACKET_SIZE, present_size=HEAPS_PER_CHUNK * 2)
        chunks = self.run(h, [dict(chunk_id=0, heap_index=heap_index, heap_offset=4096, seed=4)], good=False)
        present = chunks[0].present
        if ok:
            assert np.flatnonzero(present).tolist() == [heap_index, heap_index + 1]
            assert chunks[0].heap(4) == heap_payload(4)
        else:
            assert not np.any(present)
        assert h.guards_intact()
        assert h.stats()["out_of_range_heaps"] == (0 if ok else 1)

    def test_many_out_of_range(self, place_direct_llc):
        """Every bad heap is counted; the stream goes on placing good ones."""
        h = self.make(place_direct_llc)
        bad = [dict(chunk_id=0, heap_offset=CHUNK_PAYLOAD_SIZE - 100 + i, heap_index=2) for i in range(5)]
        chunks = self.run(h, bad)
        self.check_good(chunks)
        assert h.guards_intact()
        assert h.stats()["out_of_range_heaps"] == 5


# ---------------------------------------------------------------------------
# Place callback inputs


class TestPlaceInputs:
    def test_special_items_can_be_requested(self, place_direct_llc):
        """Items may name HEAP_CNT: then chunk_id == heap cnt here."""
        items = [spead2.HEAP_CNT_ID] + DIRECT_ITEMS[1:]
        h = Harness(place_direct_llc, items=items)
        # cnt 2 and 3; descriptor-like heap (cnt 1) has length 80 and heap_offset 0: fits
        h.send(direct_heap(2, heap_index=4, heap_offset=0, seed=2))
        h.send(direct_heap(3, heap_index=6, heap_offset=1024, seed=3))
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3]
        assert np.flatnonzero(chunks[2].present).tolist() == [4]
        assert np.flatnonzero(chunks[3].present).tolist() == [6]
        assert chunks[3].heap(1) == heap_payload(3)

    def test_last_duplicate_item_wins(self, place_direct_llc):
        h = Harness(place_direct_llc, items=DIRECT_ITEMS)
        payload = heap_payload(11)
        imm = [(0x2000, 1), (0x2001, 3), (0x2002, 0), (0x2000, 2)]
        h.send([make_packet(5, 1024, 0, payload[:512], imm, [(DATA_ID, 0)]),
                make_packet(5, 1024, 512, payload[512:], imm, [(DATA_ID, 0)])])
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        assert np.flatnonzero(chunks[2].present).tolist() == [3]
        assert chunks[2].heap(0) == payload

    @pytest.mark.parametrize("with_special_item", [False, True])
    @pytest.mark.parametrize("layout", ["before", "among", "after"])
    def test_item_position_among_specials(self, place_direct_llc, layout, with_special_item):
        """Wanted items are found wherever they sit relative to the four special
        pointers (the stream skips the leading run of specials when no wanted
        item is a special ID), in single- and multi-packet heaps."""
        items = DIRECT_ITEMS + ([spead2.HEAP_CNT_ID] if with_special_item else [])
        h = Harness(place_direct_llc, items=items)
        wanted = [(0x2000, 2, True), (0x2001, 7, True), (0x2002, 3 * 1024, True)]
        for cnt, split in [(5, HEAP_PAYLOAD_SIZE), (6, HEAP_PAYLOAD_SIZE // 2)]:
            payload = heap_payload(cnt)
            for offset in range(0, HEAP_PAYLOAD_SIZE, split):
                part = payload[offset:offset + split]
                specials = [(spead2.HEAP_CNT_ID, cnt, True), (spead2.HEAP_LENGTH_ID, HEAP_PAYLOAD_SIZE, True),
                            (spead2.PAYLOAD_OFFSET_ID, offset, True), (spead2.PAYLOAD_LENGTH_ID, len(part), True)]
                if layout == "before":
                    order = wanted + specials
                elif layout == "among":
                    order = specials[:1] + wanted[:2] + specials[1:3] + wanted[2:] + specials[3:]
                else:
                    order = specials + wanted
                h.send([make_packet(cnt, None, offset, part, omit=(1, 2, 3, 4), extra_pointers=pointers(order))])
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        assert np.flatnonzero(chunks[2].present).tolist() == [7]
        # Both heaps went to the same place; the second (cnt 6) is what is there now.
        assert chunks[2].heap(3) == heap_payload(6)
        assert h.stats()["rejected_heaps"] == 0

    def test_address_items_are_not_values(self, place_direct_llc):
        """Only immediate pointers provide item values."""
        h = Harness(place_direct_llc, items=DIRECT_ITEMS)
        h.send(heap_packets(5, heap_payload(1), 512, [], [(0x2000, 0)]))
        h.queue.stop()
        assert h.collect() == []
        assert h.stats()["rejected_heaps"] == 1

    def test_items_from_first_packet_only(self, place_direct_llc):
        """The callback sees the first accepted packet's items; later ones don't matter."""
        h = Harness(place_direct_llc, items=DIRECT_ITEMS)
        payload = heap_payload(12)
        h.send([
            make_packet(5, 1024, 0, payload[:512], [(0x2000, 1), (0x2001, 2), (0x2002, 0)]),
            make_packet(5, 1024, 512, payload[512:], [(0x2000, 3), (0x2001, 7), (0x2002, 0)]),
        ])
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1]
        assert np.flatnonzero(chunks[1].present).tolist() == [2]
        assert chunks[1].heap(0) == payload

    def test_large_chunk_id(self, place_direct_llc):
        """A jump to a huge chunk ID fast-forwards the window (no back-fill from 0)."""
        big = 2**47 + 5
        h = Harness(place_direct_llc, items=DIRECT_ITEMS)
        h.send(direct_heap(2, chunk_id=3, heap_index=0, heap_offset=0, seed=1))
        h.send(direct_heap(3, chunk_id=big, heap_index=1, heap_offset=1024, seed=2))
        h.send(direct_heap(4, chunk_id=big - 2, heap_index=2, heap_offset=2048, seed=3))
        h.queue.stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, big - 3, big - 2, big - 1, big]
        assert np.flatnonzero(chunks[3].present).tolist() == [0]
        assert np.flatnonzero(chunks[5].present).tolist() == [2]
        assert np.flatnonzero(chunks[7].present).tolist() == [1]
        assert chunks[7].heap(1) == heap_payload(2)

    def test_zero_length_heap_not_placed(self, place_direct_llc):
        h = Harness(place_direct_llc, items=DIRECT_ITEMS)
        h.send([make_packet(5, 0, 0, b"", [(0x2000, 0), (0x2001, 1)])])
        h.queue.stop()
        assert h.collect() == []
        stats = h.stats()
        assert stats["rejected_heaps"] == 0
        assert stats["packets"] == 1

    def test_custom_stat_from_place(self, make_place_bind):
        config = spead2.recv.StreamConfig(max_heaps=128)
        index = config.add_stat("placed_heaps")
        bound = make_place_bind(1, index)
        h = Harness(bound.llc, items=[POSITION_ID, spead2.HEAP_LENGTH_ID, spead2.PAYLOAD_LENGTH_ID],
                    config=config)
        h.send_descriptor()
        h.send_positions(range(25))
        h.send_stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        check_chunk_contents(chunks[1], range(10, 20))
        stats = h.stats()
        assert stats["placed_heaps"] == 25
        names = [s.name for s in h.stream.config.stats]
        assert names.index("placed_heaps") == index < names.index("too_old_heaps")


# ---------------------------------------------------------------------------
# Malformed datagrams: our extension (malformed_packets)


class TestMalformed:
    @pytest.mark.parametrize("kind", MALFORMED_KINDS)
    def test_dropped_and_counted(self, place_plain_llc, kind):
        h = Harness(place_plain_llc)
        h.send_descriptor()
        h.send_positions([0, 1])
        h.send([malformed_packet(kind, heap_cnt=500)])
        h.send_positions([2, 3])
        h.send_stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0]
        check_chunk_contents(chunks[0], [0, 1, 2, 3])
        stats = h.stats()
        assert stats["malformed_packets"] == 1
        assert stats["packets"] == 2 * 4 + 2
        assert stats["heaps"] == 5
        assert stats["rejected_heaps"] == 2

    def test_many_malformed(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.send_descriptor()
        for i, kind in enumerate(MALFORMED_KINDS):
            h.send_positions([i])
            h.send([malformed_packet(kind)])
        h.send_stop()
        chunks = h.collect()
        n = len(MALFORMED_KINDS)
        assert h.stats()["malformed_packets"] == n
        present = np.concatenate([c.present for c in chunks])
        assert present[:n].tolist() == [1] * n

    def test_malformed_packet_inside_heap(self, place_plain_llc):
        """A corrupted copy of a heap's packet doesn't hurt the real one."""
        h = Harness(place_plain_llc)
        first, second = position_heap(4, 10)
        corrupt = bytearray(second)
        corrupt[0] = 0x00
        h.send([first, bytes(corrupt), second + b"\0", second])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [4])
        assert h.stats()["malformed_packets"] == 2

    def test_unsized_heap_not_malformed(self, place_plain_llc):
        """No HEAP_LENGTH: dropped by the stream (unsized heaps not allowed), but
        it is a valid packet, so it counts in packets and not in malformed_packets."""
        h = Harness(place_plain_llc)
        payload = heap_payload(3)
        h.send([make_packet(7, None, 0, payload[:512], [(POSITION_ID, 3)], [(DATA_ID, 0)]),
                make_packet(7, None, 512, payload[512:], [(POSITION_ID, 3)], [(DATA_ID, 0)])])
        h.send_positions([5])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [5])
        stats = h.stats()
        assert stats["malformed_packets"] == 0
        assert stats["packets"] == 5


# ---------------------------------------------------------------------------
# Heap assembly and statistics


def split(position, cnt, size):
    return heap_packets(cnt, heap_payload(position), size, [(POSITION_ID, position)], [(DATA_ID, 0)])


class TestAssembly:
    def test_in_order_duplicate(self, place_plain_llc):
        h = Harness(place_plain_llc)
        a, b = split(1, 10, 512)
        h.send([a, a, b, b])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1])
        stats = h.stats()
        assert stats["packets"] == 5
        assert stats["heaps"] == 1
        assert stats["incomplete_heaps_flushed"] == 0

    def test_in_order_gap_never_completes(self, place_plain_llc):
        h = Harness(place_plain_llc)
        p = split(2, 10, 256)
        h.send([p[0], p[2], p[1], p[3]])  # p[2] is a gap: dropped; then p[3] is one too
        h.send_positions([5])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [5])
        # what was accepted was written, even though the heap is incomplete
        assert chunks[0].data[2048:2048 + 512].tobytes() == heap_payload(2)[:512]
        stats = h.stats()
        assert stats["incomplete_heaps_flushed"] == 1
        assert stats["heaps"] == 2
        assert stats["packets"] == 4 + 2 + 1

    def test_in_order_first_packet_must_be_offset_zero(self, place_plain_llc):
        h = Harness(place_plain_llc)
        a, b = split(3, 10, 512)
        h.send([b, a])
        h.send_stop()
        chunks = h.collect()
        assert chunks[0].present[3] == 0
        assert chunks[0].data[3072:3072 + 512].tobytes() == heap_payload(3)[:512]
        stats = h.stats()
        assert stats["incomplete_heaps_flushed"] == 1
        assert stats["packets"] == 3

    def test_out_of_order_mode(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, allow_out_of_order=True)
        h = Harness(place_plain_llc, config=config)
        p = split(3, 10, 256)
        q = split(4, 11, 256)
        # reversed, with an exact duplicate and a partial overlap
        overlap = make_packet(10, 1024, 128, heap_payload(99)[:256], [(POSITION_ID, 3)], [(DATA_ID, 0)])
        h.send([p[3], p[1], p[1], overlap, p[2], p[0]])
        h.send([q[2], q[0], q[3], q[1], q[0]])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [3, 4])
        stats = h.stats()
        # The last q[0] arrives after heap 11 completed: it starts a new live
        # heap with the same cnt, which is flushed (incomplete) at the stop.
        assert stats["incomplete_heaps_flushed"] == 1
        assert stats["heaps"] == 3
        assert stats["packets"] == 12

    def test_out_of_order_gap(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, allow_out_of_order=True)
        h = Harness(place_plain_llc, config=config)
        p = split(3, 10, 256)
        h.send([p[3], p[0], p[1]])
        h.send_stop()
        chunks = h.collect()
        assert chunks[0].present[3] == 0
        assert h.stats()["incomplete_heaps_flushed"] == 1

    def test_eviction(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=2)
        h = Harness(place_plain_llc, config=config)
        a, b, c = (split(pos, 10 + pos, 512) for pos in (1, 2, 3))
        h.send([a[0], b[0], c[0]])  # c evicts a (FIFO)
        h.send([a[1], b[1], c[1]])  # a[1] is now the non-zero-offset start of a new heap: dropped
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [2, 3])
        stats = h.stats()
        assert stats["incomplete_heaps_evicted"] == 1
        assert stats["incomplete_heaps_flushed"] == 0
        assert stats["heaps"] == 3
        assert stats["packets"] == 7

    def test_eviction_is_fifo_not_lowest_cnt(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=2)
        h = Harness(place_plain_llc, config=config)
        a, b, c = split(1, 30, 512), split(2, 20, 512), split(3, 40, 512)
        h.send([a[0], b[0], c[0], b[1], c[1]])  # a (cnt 30) is the oldest, so it goes
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [2, 3])
        assert h.stats()["incomplete_heaps_evicted"] == 1

    @pytest.mark.parametrize("substreams, evicted", [(1, 1), (2, 0)])
    def test_substreams(self, place_plain_llc, substreams, evicted):
        config = spead2.recv.StreamConfig(max_heaps=1, substreams=substreams)
        h = Harness(place_plain_llc, config=config)
        a, b = split(1, 10, 512), split(2, 11, 512)  # cnt 10 -> substream 0, 11 -> 1
        h.send([a[0], b[0], a[1], b[1]])
        h.send_stop()
        chunks = h.collect()
        stats = h.stats()
        assert stats["incomplete_heaps_evicted"] == evicted
        check_chunk_contents(chunks[0], [1, 2] if evicted == 0 else [2])

    def test_same_substream_evicts(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=1, substreams=2)
        h = Harness(place_plain_llc, config=config)
        a, b = split(1, 10, 512), split(2, 12, 512)  # both substream 0
        h.send([a[0], b[0], a[1], b[1]])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [2])
        assert h.stats()["incomplete_heaps_evicted"] == 1

    @pytest.mark.parametrize("cnt_step", [1, 2**20, 2**33 + 1])
    @pytest.mark.parametrize("max_heaps, evicted", [(64, 0), (50, 0), (32, 18)])
    def test_interleaved_heaps(self, place_plain_llc, cnt_step, max_heaps, evicted):
        """50 heaps in flight at once: first halves, then second halves."""
        config = spead2.recv.StreamConfig(max_heaps=max_heaps)
        # max_chunks large enough that no chunk leaves the window early
        h = Harness(place_plain_llc, config=config, n_chunks=8, data_ring=8, max_chunks=6)
        heaps = [split(pos, 7 + pos * cnt_step, 512) for pos in range(50)]
        h.send([p[0] for p in heaps])
        h.send([p[1] for p in heaps])
        h.send_stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, 4]
        survivors = list(range(evicted, 50))
        for c in chunks:
            check_chunk_contents(c, [p for p in survivors if p // HEAPS_PER_CHUNK == c.chunk_id])
        stats = h.stats()
        assert stats["incomplete_heaps_evicted"] == evicted
        assert stats["too_old_heaps"] == 0
        # evicted heaps count as heaps too; their second halves are then dropped
        assert stats["heaps"] == 50

    def test_chunk_leaves_window_before_heaps_complete(self, place_plain_llc):
        """Heaps still being received when their chunk is flushed are too old."""
        h = Harness(place_plain_llc, n_chunks=8, data_ring=8)  # max_chunks=4
        heaps = [split(pos, 7 + pos, 512) for pos in range(50)]
        h.send([p[0] for p in heaps])  # heap 40 pushes chunk 0 out of the window
        h.send([p[1] for p in heaps])
        h.send_stop()
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2, 3, 4]
        check_chunk_contents(chunks[0], [])
        # the first halves of heaps 0-9 were written before chunk 0 left
        for pos in range(10):
            assert chunks[0].heap(pos)[:512] == heap_payload(pos)[:512]
        for c in chunks[1:]:
            check_chunk_contents(c, range(c.chunk_id * 10, c.chunk_id * 10 + 10))
        assert h.stats()["too_old_heaps"] == 10

    def test_flushed_at_stop(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.send(split(1, 10, 512)[:1])
        h.send(split(2, 11, 512)[:1])
        h.send_positions([3])
        h.queue.stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [3])
        stats = h.stats()
        assert stats["incomplete_heaps_flushed"] == 2
        assert stats["heaps"] == 3

    def test_flavour_change_within_heap(self, place_plain_llc):
        h = Harness(place_plain_llc)
        payload = heap_payload(6)
        h.send([
            make_packet(10, 1024, 0, payload[:512], [(POSITION_ID, 6)], heap_address_bits=48),
            make_packet(10, 1024, 512, payload[512:], [(POSITION_ID, 6)], heap_address_bits=40),
        ])
        h.send_stop()
        chunks = h.collect()
        assert chunks[0].present[6] == 0
        assert h.stats()["incomplete_heaps_flushed"] == 1

    def test_heap_length_change_within_heap(self, place_plain_llc):
        h = Harness(place_plain_llc)
        payload = heap_payload(6)
        h.send([
            make_packet(10, 1024, 0, payload[:512], [(POSITION_ID, 6)]),
            make_packet(10, 2048, 512, payload[512:], [(POSITION_ID, 6)]),
        ])
        h.send_stop()
        chunks = h.collect()
        assert chunks[0].present[6] == 0
        assert h.stats()["incomplete_heaps_flushed"] == 1

    def test_address_past_heap_length(self, place_plain_llc):
        """An item address beyond HEAP_LENGTH makes the packet unacceptable."""
        h = Harness(place_plain_llc)
        payload = heap_payload(6)
        h.send([make_packet(10, 1024, 0, payload, [(POSITION_ID, 6)], [(DATA_ID, 2000)])])
        h.send_positions([7])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [7])

    def test_single_packet_heaps(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.send_descriptor()
        for pos in range(5):
            h.send(split(pos, 10 + pos, HEAP_PAYLOAD_SIZE))
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], range(5))
        stats = h.stats()
        assert stats["single_packet_heaps"] == 7
        assert stats["heaps"] == 6

    def test_max_chunks_one(self, place_plain_llc):
        h = Harness(place_plain_llc, max_chunks=1)
        h.send_descriptor()
        h.send_positions([15, 5, 25, 16])
        h.send_stop()
        chunks = h.collect()
        # The first heap jumps straight to chunk 1 (chunk_id - tail >= max_chunks
        # fast-forwards the window, so chunk 0 is never allocated).
        assert [c.chunk_id for c in chunks] == [1, 2]
        check_chunk_contents(chunks[0], [15])
        check_chunk_contents(chunks[1], [25])
        assert h.stats()["too_old_heaps"] == 2

    def test_batches_inproc(self, place_plain_llc):
        """The inproc reader makes one batch per packet."""
        h = Harness(place_plain_llc)
        h.send_descriptor()
        h.send_positions(range(12))
        h.send_stop()
        h.collect()
        stats = h.stats()
        assert stats["batches"] == 26
        assert stats["max_batch"] == 1


# ---------------------------------------------------------------------------
# The stop item


class TestStopItem:
    def test_stop_in_first_packet_of_heap(self, place_plain_llc):
        h = Harness(place_plain_llc)
        payload = heap_payload(4)
        imm = [(POSITION_ID, 4)]
        h.send_positions([1])
        h.send([
            make_packet(10, 1024, 0, payload[:512], imm + [(spead2.STREAM_CTRL_ID, spead2.CTRL_STREAM_STOP)]),
            make_packet(10, 1024, 512, payload[512:], imm),
        ])
        h.send_positions([35])  # never processed
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0]
        check_chunk_contents(chunks[0], [1])
        # the accepted half was written even so
        assert chunks[0].heap(4)[:512] == payload[:512]
        stats = h.stats()
        assert stats["packets"] == 3
        assert stats["incomplete_heaps_flushed"] == 1
        assert stats["heaps"] == 2

    def test_stop_in_last_packet_of_heap(self, place_plain_llc):
        """A complete heap carrying the stop item is discarded, not delivered."""
        h = Harness(place_plain_llc)
        payload = heap_payload(4)
        imm = [(POSITION_ID, 4)]
        h.send_positions([1])
        h.send([
            make_packet(10, 1024, 0, payload[:512], imm),
            make_packet(10, 1024, 512, payload[512:], imm + [(spead2.STREAM_CTRL_ID, spead2.CTRL_STREAM_STOP)]),
        ])
        h.send_positions([2])
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1])
        stats = h.stats()
        assert stats["heaps"] == 1
        assert stats["packets"] == 4
        assert stats["incomplete_heaps_flushed"] == 0

    def test_stop_on_stop_item_disabled(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, stop_on_stop_item=False)
        h = Harness(place_plain_llc, config=config)
        h.send_positions([1])
        h.send_stop()
        h.send_positions([2])
        h.queue.stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1, 2])

    def test_stop_item_must_be_immediate(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.send_positions([1])
        h.send([make_packet(50, 16, 0, bytes(16), [], [(spead2.STREAM_CTRL_ID, 2)])])
        h.send_positions([2])
        h.queue.stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1, 2])


# ---------------------------------------------------------------------------
# Starting, readers and rings


class TestReaders:
    def test_explicit_start(self, place_plain_llc, thread_pool):
        config = spead2.recv.StreamConfig(max_heaps=128, explicit_start=True)
        h = Harness(place_plain_llc, config=config, thread_pool=thread_pool)
        h.send_positions([1, 2])
        time.sleep(0.2)
        assert h.stats()["packets"] == 0
        with pytest.raises(spead2.Empty):
            h.data_ring.get_nowait()
        h.stream.start()
        with pytest.raises(RuntimeError):
            h.stream.add_inproc_reader(spead2.InprocQueue())
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1, 2])
        assert h.stats()["packets"] == 5

    def test_buffer_reader_one_batch(self, place_plain_llc, thread_pool):
        h = Harness(place_plain_llc, thread_pool=thread_pool, n_chunks=8, data_ring=8)
        packets = [descriptor_heap(1)]
        for pos in range(30):
            packets += position_heap(pos, pos + 2)
        packets.append(stop_heap(100))
        h.stream.add_buffer_reader(b"".join(packets))
        chunks = h.collect()
        assert [c.chunk_id for c in chunks] == [0, 1, 2]
        for c in chunks:
            check_chunk_contents(c, range(c.chunk_id * 10, c.chunk_id * 10 + 10))
        stats = h.stats()
        assert stats["batches"] == 1
        assert stats["max_batch"] == len(packets)
        assert stats["packets"] == len(packets)

    def test_buffer_reader_empty(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.stream.add_buffer_reader(b"")
        assert h.collect() == []  # the ring stops: the stream ended
        assert h.stats()["packets"] == 0
        assert h.stats()["malformed_packets"] == 0

    def test_explicit_start_never_started(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, explicit_start=True)
        h = Harness(place_plain_llc, config=config)
        h.send_positions([1])
        h.stream.add_buffer_reader(b"".join(position_heap(2, 50)))
        time.sleep(0.1)
        h.stream.stop()
        assert h.stats()["packets"] == 0
        assert list(h.data_ring) == []

    def test_start_is_idempotent(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, explicit_start=True)
        h = Harness(place_plain_llc, config=config)
        h.stream.start()
        h.stream.start()
        h.send_positions([1])
        h.send_stop()
        chunks = h.collect()
        check_chunk_contents(chunks[0], [1])
        assert h.stats()["packets"] == 3

    def test_buffer_reader_numpy_buffer(self, place_plain_llc):
        h = Harness(place_plain_llc, n_chunks=8, data_ring=8)
        packets = []
        for pos in range(12):
            packets += position_heap(pos, pos + 2)
        buf = np.frombuffer(b"".join(packets), np.uint8).copy()
        h.stream.add_buffer_reader(buf)
        del buf
        gc.collect()  # the stream keeps the buffer alive
        chunks = h.collect()
        check_chunk_contents(chunks[0], range(10))
        check_chunk_contents(chunks[1], range(10, 12))

    def test_buffer_reader_stops_at_garbage(self, place_plain_llc):
        h = Harness(place_plain_llc, n_chunks=8, data_ring=8)
        packets = []
        for pos in range(5):
            packets += position_heap(pos, pos + 2)
        tail = []
        for pos in range(5, 9):
            tail += position_heap(pos, pos + 2)
        h.stream.add_buffer_reader(b"".join(packets) + b"\x53\x04garbage!" + b"".join(tail))
        chunks = h.collect()
        check_chunk_contents(chunks[0], range(5))
        stats = h.stats()
        assert stats["packets"] == 10
        assert stats["malformed_packets"] == 1

    def test_buffer_reader_non_contiguous(self, place_plain_llc):
        h = Harness(place_plain_llc)
        buf = np.zeros(200, np.uint8)[::2]
        with pytest.raises((ValueError, BufferError)):
            h.stream.add_buffer_reader(buf)
        h.stream.stop()

    def test_two_readers(self, place_plain_llc):
        """Packets from several readers go into the same chunks."""
        h = Harness(place_plain_llc)
        other = spead2.InprocQueue()
        h.stream.add_inproc_reader(other)
        for pos in range(10):
            for packet in position_heap(pos, pos + 2):
                (other if pos % 2 else h.queue).add_packet(packet)
        deadline = time.monotonic() + 10
        while h.stats()["packets"] < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        h.queue.stop()  # the first queue to end stops the whole stream
        chunks = h.collect()
        check_chunk_contents(chunks[0], range(10))

    def test_stream_id_and_rings(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=128, stream_id=42)
        h = Harness(place_plain_llc, config=config)
        assert h.stream.data_ringbuffer is h.data_ring
        assert h.stream.free_ringbuffer is h.free_ring
        h.send_positions([3])
        h.send_stop()
        chunks = h.collect()
        assert chunks[0].stream_id == 42

    def test_effective_config(self, place_plain_llc):
        config = spead2.recv.StreamConfig(max_heaps=7, allow_unsized_heaps=True)
        config.add_stat("mine")
        h = Harness(place_plain_llc, config=config)
        eff = h.stream.config
        assert eff.max_heaps == 7
        assert eff.allow_unsized_heaps is False
        names = [s.name for s in eff.stats]
        assert names[9:] == ["mine", "too_old_heaps", "rejected_heaps", "out_of_range_heaps", "malformed_packets"]
        assert eff.get_stat_index("malformed_packets") == 13
        # the user's config is untouched
        assert config.allow_unsized_heaps is True
        assert [s.name for s in config.stats][9:] == ["mine"]
        stats = h.stream.stats
        assert list(stats.keys()) == names
        assert stats is not h.stream.stats
        h.stream.stop()

    def test_add_free_chunk_zeroes_present_and_full(self, place_plain_llc):
        h = Harness(place_plain_llc, n_chunks=0, free_ring=2)
        chunks = [spead2.recv.Chunk(present=np.ones(10, np.uint8), data=np.zeros(10240, np.uint8))
                  for _ in range(3)]
        present = chunks[0].present
        h.stream.add_free_chunk(chunks[0])
        assert not np.any(present)
        h.stream.add_free_chunk(chunks[1])
        with pytest.raises(spead2.Full):
            h.stream.add_free_chunk(chunks[2])
        # a failed add leaves the chunk usable
        assert chunks[2].present is not None and chunks[2].data is not None
        h.stream.stop()
        # after stop, adding is silently ignored
        h.stream.add_free_chunk(chunks[2])

    def test_add_free_chunk_without_buffers(self, place_plain_llc):
        h = Harness(place_plain_llc)
        with pytest.raises(ValueError):
            h.stream.add_free_chunk(spead2.recv.Chunk(data=np.zeros(10, np.uint8)))
        with pytest.raises(ValueError):
            h.stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(10, np.uint8)))
        h.stream.stop()

    def test_chunk_subclass_round_trip(self, place_plain_llc):
        class MyChunk(spead2.recv.Chunk):
            def __init__(self, label, **kwargs):
                super().__init__(**kwargs)
                self.label = label

        h = Harness(place_plain_llc, n_chunks=0, free_ring=4)
        mine = [MyChunk(f"c{i}", present=np.zeros(10, np.uint8), data=np.zeros(10240, np.uint8))
                for i in range(4)]
        for c in mine:
            h.stream.add_free_chunk(c)
        h.send_positions([1, 12])
        h.send_stop()
        got = list(h.data_ring)
        assert [c.chunk_id for c in got] == [0, 1]
        assert all(any(g is m for m in mine) for g in got)
        assert {g.label for g in got} <= {"c0", "c1", "c2", "c3"}
        assert got[1].present[2] == 1

    def test_chunks_in_flight_hide_buffers(self, place_plain_llc):
        h = Harness(place_plain_llc)
        for c in h.chunks:
            assert c.data is None and c.present is None and c.extra is None
        h.stream.stop()

    def test_stop_delivers_nothing_more(self, place_plain_llc):
        """A user stop does not deliver the chunks still under construction."""
        h = Harness(place_plain_llc)
        h.send_positions([1, 2, 15])
        deadline = time.monotonic() + 10
        while h.stats()["packets"] < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        h.stream.stop()
        assert list(h.data_ring) == []
        assert h.stats()["packets"] == 6

    def test_readers_after_stop_ignored(self, place_plain_llc):
        h = Harness(place_plain_llc)
        h.stream.stop()
        q = spead2.InprocQueue()
        h.stream.add_inproc_reader(q)  # silently ignored
        q.add_packet(position_heap(1, 2)[0])
        time.sleep(0.05)
        assert h.stats()["packets"] == 0


def test_chunk_weakrefs_after_stream_round_trips(place_plain_llc):
    """Chunks that went through a stream are freed once nobody holds them."""
    h = Harness(place_plain_llc)
    refs = [weakref.ref(c) for c in h.chunks]
    h.send_positions(range(45))
    h.send_stop()
    h.collect(recycle=True)
    h.chunks = []
    h.stream.stop()
    del h
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
