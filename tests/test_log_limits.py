"""Rate-limited logging: a flood of bad packets gives a few log lines and a
summary with the exact count, never one line per packet; statistics stay exact."""

import re
import time

import numpy as np
import pytest

import spead2
import spead2.recv

from spead_builder import make_packet, position_heap

pytest.importorskip("numba")
pytest.importorskip("scipy")


def wait_for(handler, pattern, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in handler.messages():
            match = re.search(pattern, m)
            if match:
                return match
        time.sleep(0.02)
    return None


def run_stream(packets, place):
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=2, place=place),
        spead2.recv.ChunkRingbuffer(4), spead2.recv.ChunkRingbuffer(4))
    for _ in range(4):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(10, np.uint8), data=np.zeros(10240, np.uint8)))
    queue = spead2.InprocQueue()
    stream.add_inproc_reader(queue)
    for p in packets:
        queue.add_packet(p)
    queue.stop()
    for chunk in stream.data_ringbuffer:
        stream.add_free_chunk(chunk)
    stream.stop()
    return stream.stats


def test_out_of_order_flood_is_summarised(spead2_log, place_plain_llc):
    spead2._spead2._set_log_limits(5, 3600.0)   # only the summary at stop
    first, second = position_heap(3, 4)
    n_bad = 2000
    stats = run_stream([first] + [first] * n_bad + [second], place_plain_llc)
    assert stats["packets"] == n_bad + 2
    assert stats["heaps"] == 1
    summary = wait_for(spead2_log, r"(\d+) packets dropped in the last [\d.]+ s \(not logged one by one\): "
                                   r"(\d+) out-of-order")
    assert summary is not None, spead2_log.messages()[-10:]
    singles = [m for m in spead2_log.messages() if "out-of-order packet (offset" in m]
    assert len(singles) == 5
    assert int(summary.group(2)) == n_bad - 5 == int(summary.group(1))
    assert any("further packets dropped (out-of-order) are counted" in m for m in spead2_log.messages())
    # A few lines, not thousands.
    assert len(spead2_log.records) < 20


def test_malformed_flood_is_summarised(spead2_log, place_plain_llc):
    """Datagrams the decoder rejects: the limiter is process-wide, so count
    what was logged one by one plus what the summaries report."""
    spead2._spead2._set_log_limits(5, 3600.0)
    n_bad = 500
    bad = make_packet(1, 64, 0, b"\0" * 64)[:-10]   # payload shorter than announced
    stats = run_stream([bad] * n_bad, place_plain_llc)
    assert stats["malformed_packets"] == n_bad
    assert wait_for(spead2_log, r"datagrams dropped in the last") is not None
    time.sleep(0.2)
    msgs = spead2_log.messages()
    singles = sum(1 for m in msgs if m.startswith("dropped packet"))
    summarised = sum(int(m.group(1)) for m in (re.search(r"(\d+) not a valid SPEAD packet", x) for x in msgs) if m)
    assert singles <= 5
    assert singles + summarised == n_bad
    assert len(msgs) < 20


def test_periodic_summary(spead2_log, place_plain_llc):
    """With a short interval, summaries also come while the stream runs."""
    spead2._spead2._set_log_limits(1, 0.0)
    first, second = position_heap(3, 4)
    stats = run_stream([first] + [first] * 300 + [second], place_plain_llc)
    assert stats["packets"] == 302
    assert wait_for(spead2_log, r"out-of-order") is not None
    time.sleep(0.2)
    counted = sum(int(m.group(1)) for m in (re.search(r"(\d+) out-of-order", x) for x in spead2_log.messages()) if m)
    singles = sum(1 for m in spead2_log.messages() if "out-of-order packet (offset" in m)
    assert singles == 1 and singles + counted == 300


def test_limits_validated():
    with pytest.raises(ValueError):
        spead2._spead2._set_log_limits(5, -1.0)
