"""Replay of captures larger than the pcap reader's page-table populate-ahead
distance (32 MiB): the helper thread that maps the file ahead of the reader
must not change what arrives, and must be gone once the stream stops."""

import os
import pathlib
import struct

import numpy as np
import pytest

import spead2
import spead2.recv
from spead_builder import HEAP_PAYLOAD_SIZE, HEAPS_PER_CHUNK, heap_payload, position_heap

N_HEAPS = 32_000  # 64,000 frames, ~40 MB


def _udp_frame(payload):
    udp = struct.pack(">HHHH", 1234, 7148, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
    return bytes(12) + b"\x08\x00" + ip


@pytest.fixture(scope="module")
def big_capture(tmp_path_factory):
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for pos in range(N_HEAPS):
        for packet in position_heap(pos, pos + 2):
            frame = _udp_frame(packet)
            parts.append(struct.pack("<IIII", pos // 1000, pos % 1000, len(frame), len(frame)))
            parts.append(frame)
    path = tmp_path_factory.mktemp("populate") / "big.pcap"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size > 36 << 20
    return str(path)


def _stream(place, n_chunks=8):
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=2, place=place),
        data_ring, free_ring)
    for _ in range(n_chunks):
        stream.add_free_chunk(spead2.recv.Chunk(
            present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
            data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8)))
    return stream, data_ring


def _populate_threads():
    names = []
    for task in pathlib.Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread exited meanwhile
            pass
    return [n for n in names if n == "spead2-populate"]


def test_large_capture_complete(place_plain_llc, big_capture):
    stream, data_ring = _stream(place_plain_llc)
    stream.add_udp_pcap_file_reader(big_capture)
    seen = 0
    rng = np.random.default_rng(1)
    for chunk in data_ring:
        assert chunk.present.tolist() == [1] * HEAPS_PER_CHUNK, f"chunk {chunk.chunk_id} incomplete"
        # spot-check payloads (checking all 32,000 would dominate the run time)
        i = int(rng.integers(HEAPS_PER_CHUNK))
        pos = chunk.chunk_id * HEAPS_PER_CHUNK + i
        assert chunk.data[i * HEAP_PAYLOAD_SIZE:(i + 1) * HEAP_PAYLOAD_SIZE].tobytes() == heap_payload(pos)
        seen += 1
        stream.add_free_chunk(chunk)
    stream.stop()
    assert seen == N_HEAPS // HEAPS_PER_CHUNK
    assert stream.stats["packets"] == 2 * N_HEAPS
    assert stream.stats["heaps"] == N_HEAPS
    assert _populate_threads() == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc thread names")
def test_stop_early_ends_populator(place_plain_llc, big_capture):
    """Stopping after the first chunk, while the helper is still mapping ahead."""
    stream, data_ring = _stream(place_plain_llc)
    stream.add_udp_pcap_file_reader(big_capture)
    first = data_ring.get()
    assert first.chunk_id == 0
    stream.stop()
    assert _populate_threads() == []
