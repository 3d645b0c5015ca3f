"""spead2.prometheus: statistics, ring and group health exported, parsed back."""

import numpy as np
import pytest

import spead2
import spead2.recv

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("numba")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import spead2.prometheus  # noqa: E402
from spead_builder import HEAPS_PER_CHUNK, position_heap  # noqa: E402


def scrape(registry):
    out = {}
    for family in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = (family.type, sample.value)
    return out


def chunk():
    return spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8), data=np.zeros(10240, np.uint8))


def test_group_export(make_place_bind):
    registry = prometheus_client.CollectorRegistry()
    config = spead2.recv.ChunkStreamGroupConfig(
        max_chunks=4, eviction_mode=spead2.recv.ChunkStreamGroupConfig.EvictionMode.LOSSLESS)
    data_ring, free_ring = spead2.recv.ChunkRingbuffer(8), spead2.recv.ChunkRingbuffer(8)
    group = spead2.recv.ChunkStreamRingGroup(config, data_ring, free_ring)
    queues, keep = [], []
    for i in range(2):
        cfg = spead2.recv.StreamConfig(max_heaps=16)
        placed = cfg.add_stat("myapp.placed")
        cfg.add_stat("myapp.largest", spead2.recv.StreamStatConfig.Mode.MAXIMUM)
        place = make_place_bind(1, placed)
        member = group.emplace_back(spead2.ThreadPool(1), cfg, spead2.recv.ChunkStreamConfig(
            items=[0x1000, spead2.HEAP_LENGTH_ID, spead2.PAYLOAD_LENGTH_ID], max_chunks=4, place=place.llc))
        keep.append(place)   # the user data must outlive the member
        q = spead2.InprocQueue()
        member.add_inproc_reader(q)
        queues.append(q)
    for _ in range(8):
        group.add_free_chunk(chunk())
    spead2.prometheus.register(group, name="feed", registry=registry)
    for p in range(3 * HEAPS_PER_CHUNK):
        for pkt in position_heap(p, p + 1):
            queues[p % 2].add_packet(pkt)
    for q in queues:
        q.stop()
    chunks = list(data_ring)
    assert len(chunks) >= 3
    got = scrape(registry)
    for i, member in enumerate(group):
        labels = (("member", str(i)), ("stream", "feed"))
        stats = member.stats
        assert got[("spead2_heaps_total", labels)] == ("counter", stats["heaps"])
        assert got[("spead2_packets_total", labels)] == ("counter", stats["packets"])
        assert got[("spead2_myapp_placed_total", labels)] == ("counter", stats["myapp.placed"]) != ("counter", 0)
        assert got[("spead2_max_batch", labels)][0] == "gauge"
        assert got[("spead2_myapp_largest", labels)][0] == "gauge"
        assert got[("spead2_too_old_heaps_total", labels)] == ("counter", 0)
    data = (("ring", "data"), ("stream", "feed"))
    assert got[("spead2_ring_capacity", data)] == ("gauge", 8)
    assert got[("spead2_ring_size", data)] == ("gauge", 0)
    assert got[("spead2_ring_high_water_mark", data)][1] >= 1
    assert ("spead2_ring_blocked_puts_total", data) in got
    assert got[("spead2_group_lossy_flushes_total", (("stream", "feed"),))] == ("counter", 0)
    assert ("spead2_group_chunks_in_window", (("stream", "feed"),)) in got
    group.stop()


def test_stream_export(place_plain_llc):
    registry = prometheus_client.CollectorRegistry()
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=2, place=place_plain_llc),
        spead2.recv.ChunkRingbuffer(4), spead2.recv.ChunkRingbuffer(4))
    for _ in range(4):
        stream.add_free_chunk(chunk())
    collector = spead2.prometheus.register(stream, name="one", registry=registry)
    q = spead2.InprocQueue()
    stream.add_inproc_reader(q)
    for p in range(HEAPS_PER_CHUNK):
        for pkt in position_heap(p, p + 1):
            q.add_packet(pkt)
    q.stop()
    for c in stream.data_ringbuffer:
        stream.add_free_chunk(c)
    got = scrape(registry)
    assert got[("spead2_heaps_total", (("stream", "one"),))] == ("counter", HEAPS_PER_CHUNK)
    assert got[("spead2_packets_total", (("stream", "one"),))] == ("counter", 2 * HEAPS_PER_CHUNK)
    registry.unregister(collector)
    assert not any(k[0] == "spead2_heaps_total" for k in scrape(registry))
    stream.stop()


def test_bad_object():
    with pytest.raises(TypeError):
        spead2.prometheus.StreamCollector(object(), "x")


def test_example_serves_metrics():
    """examples/prometheus_metrics.py (shown in doc/operations.rst) runs and exports samples."""
    import os
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "examples/prometheus_metrics.py", "--seconds", "0.5", "--port", str(port)],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "spead2 samples exported" in proc.stdout
