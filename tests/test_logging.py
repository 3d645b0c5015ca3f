"""C++ log messages reach the Python logger "spead2" (delivered by a background thread)."""

import logging
import pathlib
import time

import numpy as np
import pytest

import spead2
import spead2.recv

DATA = pathlib.Path(__file__).parent / "data"


def wait_for_record(handler, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in handler.records:
            if predicate(r):
                return r
        time.sleep(0.02)
    return None


def test_truncated_capture_warning_reaches_python_logger(spead2_log, tmp_path, place_plain_llc):
    capture = (DATA / "lo-64-40-1k-single.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture[: len(capture) // 2 + 7])   # ends inside a record
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(),
        spead2.recv.StreamConfig(),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], place=place_plain_llc),
        spead2.recv.ChunkRingbuffer(4),
        spead2.recv.ChunkRingbuffer(4),
    )
    for _ in range(4):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(10, np.uint8), data=np.zeros(10240, np.uint8)))
    stream.add_udp_pcap_file_reader(str(cut))
    for chunk in stream.data_ringbuffer:
        stream.add_free_chunk(chunk)
    stream.stop()
    record = wait_for_record(spead2_log, lambda r: "truncated" in r.getMessage())
    assert record is not None, [r.getMessage() for r in spead2_log.records]
    assert record.levelno == logging.WARNING
    assert record.name == "spead2"
    assert str(cut) in record.getMessage()


def test_python_side_log_function_levels(spead2_log):
    """The bridge keeps levels: an info message arrives as INFO."""
    spead2._spead2._log(logging.INFO, "bridge check 1234")
    record = wait_for_record(spead2_log, lambda r: "bridge check 1234" in r.getMessage())
    assert record is not None
    assert record.levelno == logging.INFO
