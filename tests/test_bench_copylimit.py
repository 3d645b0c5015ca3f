"""spead2_bench's copy limit (spead2.tools.bench.copylimit) and its columns in the table."""

import numpy as np
import pytest

from spead2.tools.bench import copylimit
from spead2.tools.bench import report as bench_report
from spead2.tools.bench import traffic as bench_traffic
from spead2.tools.bench import worker as bench_worker


def test_copy_fills_the_ring_in_turn():
    source = np.arange(10, dtype=np.uint8)
    chunks = [np.zeros(4, np.uint8) for _ in range(3)]
    seconds = copylimit.copy_seconds(source, 14, chunks)
    assert seconds >= 0
    # 14 bytes: chunk 0 gets 0-3, chunk 1 4-7, chunk 2 8-9 (the source ends),
    # then chunk 0 again from the source's start: 0-3.
    assert chunks[0].tolist() == [0, 1, 2, 3]
    assert chunks[1].tolist() == [4, 5, 6, 7]
    assert chunks[2].tolist() == [8, 9, 0, 0]


def test_measure_rates():
    source = np.ones(1 << 16, np.uint8)
    chunks = [np.zeros(1 << 14, np.uint8) for _ in range(4)]
    r = copylimit.measure(source, 1 << 20, chunks, packets=1000, reps=2)
    assert r["seconds"] > 0
    assert r["packets_per_s"] == pytest.approx(1000 / r["seconds"])
    assert r["payload_gbps"] == pytest.approx((1 << 20) * 8 / r["seconds"] / 1e9)


@pytest.mark.parametrize("source, chunks", [(np.zeros(0, np.uint8), [np.zeros(4, np.uint8)]),
                                            (np.zeros(4, np.uint8), []),
                                            (np.zeros(4, np.uint8), [np.zeros(0, np.uint8)])])
def test_empty_is_rejected(source, chunks):
    with pytest.raises(ValueError):
        copylimit.copy_seconds(source, 10, chunks)


def test_worker_copy_limit(tmp_path):
    traffic = bench_traffic.Traffic(heap_size=3000, packet_size=1000, heaps=12, channels=4)
    files = bench_traffic.generate(traffic, str(tmp_path))
    w = bench_worker.Worker()
    r = w.cmd_copy_limit({"traffic": traffic.as_dict(), "files": files, "reps": 1})
    assert r["packets_per_s"] == pytest.approx(traffic.n_packets / r["seconds"])
    # The receiver's chunk memory was used (and is kept for the receivers).
    assert len(next(iter(w.memory.values()))) == bench_worker.Receiver.MAX_CHUNKS + bench_worker.Receiver.N_FREE


def _report(copy_limit):
    m = {"available": True, "packets_per_s": 2e6, "payload_gbps": 10.0, "cpu_s_per_mpkt": 0.5,
         "heaps_complete": 4, "heaps_sent": 4, "lossless": None}
    if copy_limit:
        m["of_copy_limit"] = 0.25
    return {
        "reference": None,
        "machine": {"description": "test machine"},
        "config": {"heap_size": 1024, "flavour": "SPEAD-64-48", "heaps": 4},
        "results": [{"label": "buffer (memory)", "packet_size": 1472, "streams": None, "ours": m,
                     "copy_limit": {"packets_per_s": 8e6} if copy_limit else None}],
    }


def test_table_columns():
    text = bench_report.format_table(_report(True))
    head, _, row = text.splitlines()[1:4]
    assert "copy Mpkt/s" in head and "of copy" in head
    assert row.split()[-2:] == ["8.00", "0.25"]
    assert "copy = the copy limit" in text
    # Reports without it (older JSON) keep the old table.
    assert "copy" not in bench_report.format_table(_report(False))
