"""Per-chunk timing: when the first and the last packet written into a chunk
arrived (capture time for pcap replay, CLOCK_MONOTONIC otherwise)."""

import pathlib
import struct
import time

import numpy as np
import pytest

import spead2
import spead2.recv

from spead_builder import HEAPS_PER_CHUNK, position_heap

pytest.importorskip("numba")
pytest.importorskip("scipy")

DATA = pathlib.Path(__file__).parent / "data"


def pcap_times(path):
    """Capture times (ns) of the records of a classic pcap."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nanos = struct.unpack(endian + "I", data[:4])[0] == 0xA1B23C4D
    pos, times = 24, []
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        times.append(sec * 10**9 + (frac if nanos else frac * 1000))
        pos += 16 + caplen
    return times


def make_stream(place, items, heaps_per_chunk, heap_size):
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.ChunkStreamConfig(items=items, max_chunks=2, place=place),
        spead2.recv.ChunkRingbuffer(8), spead2.recv.ChunkRingbuffer(8))
    for _ in range(8):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(heaps_per_chunk, np.uint8),
                                                data=np.zeros(heaps_per_chunk * heap_size, np.uint8)))
    return stream


def test_default_chunk_has_no_times():
    c = spead2.recv.Chunk()
    assert c.first_packet_time == -1 and c.last_packet_time == -1


@pytest.mark.parametrize("capture", ["lo-64-48-8k-multi.pcap", "lo-64-40-1k-single.pcap"])
def test_pcap_times_are_capture_times(capture, make_place_capture):
    import json
    manifest = json.loads((DATA / capture.replace(".pcap", ".json")).read_text())
    heaps = manifest["heaps"]
    timestamps = sorted({h["timestamp"] for h in heaps})
    channels = sorted({h["frequency"] for h in heaps})
    size = manifest["heap_payload_bytes"]
    place = make_place_capture(timestamps[0], timestamps[1] - timestamps[0], channels[1] - channels[0],
                               len(channels), size)
    stream = make_stream(place.llc, [0x1600, 0x4103, spead2.HEAP_LENGTH_ID], len(channels), size)
    stream.add_udp_pcap_file_reader(str(DATA / capture))
    chunks = []
    for chunk in stream.data_ringbuffer:
        if chunk.present.any():
            chunks.append((chunk.first_packet_time, chunk.last_packet_time))
        stream.add_free_chunk(chunk)
    stream.stop()
    times = pcap_times(DATA / capture)
    assert chunks
    for first, last in chunks:
        assert min(times) <= first <= last <= max(times)
    firsts = [f for f, _ in chunks]
    assert firsts == sorted(firsts)   # the capture is in time order


def test_live_times_are_monotonic_clock(place_plain_llc):
    stream = make_stream(place_plain_llc, [0x1000, spead2.HEAP_LENGTH_ID], HEAPS_PER_CHUNK, 1024)
    queue = spead2.InprocQueue()
    stream.add_inproc_reader(queue)
    t0 = time.monotonic_ns()
    for p in range(3 * HEAPS_PER_CHUNK):
        for pkt in position_heap(p, p + 1):
            queue.add_packet(pkt)
    time.sleep(0.05)
    queue.stop()
    got = []
    for chunk in stream.data_ringbuffer:
        got.append((chunk.chunk_id, chunk.first_packet_time, chunk.last_packet_time))
        stream.add_free_chunk(chunk)
    t1 = time.monotonic_ns()
    stream.stop()
    assert [c for c, _, _ in got] == [0, 1, 2]
    for _, first, last in got:
        assert t0 <= first <= last <= t1
    assert got[0][1] <= got[1][1] <= got[2][1]


def test_reused_chunk_times_reset(place_plain_llc):
    """A recycled chunk that receives nothing reports -1, not its old times."""
    stream = make_stream(place_plain_llc, [0x1000, spead2.HEAP_LENGTH_ID], HEAPS_PER_CHUNK, 1024)
    queue = spead2.InprocQueue()
    stream.add_inproc_reader(queue)
    for p in list(range(HEAPS_PER_CHUNK)) + [5 * HEAPS_PER_CHUNK]:   # chunk 0, then a jump to chunk 5
        for pkt in position_heap(p, p + 1):
            queue.add_packet(pkt)
    queue.stop()
    got = {}
    for chunk in stream.data_ringbuffer:
        got[chunk.chunk_id] = (chunk.first_packet_time, chunk.present.any())
        stream.add_free_chunk(chunk)
    stream.stop()
    assert got[0][0] >= 0 and got[0][1]
    for cid in (4,):   # back-filled: allocated (possibly a recycled chunk) but never written
        assert got[cid] == (-1, False)
