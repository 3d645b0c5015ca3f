"""The TCP reader (add_tcp_reader), on heap streams and chunk streams.

A TCP connection is a byte stream: packets arrive split across reads and
several per read.  The same bytes, cut into the same pieces, are sent to our
receiver and to the reference's (in its virtualenv); the heaps delivered
and the statistics that do not depend on how the kernel groups bytes into
reads must be equal.  Hostile input (oversize packet, bytes that are not
SPEAD, a connection cut mid-packet) is counted or logged, never a crash,
and the stream ends when the connection closes.
"""

import json
import socket

import pytest

import spead2
import spead2.recv

import refvenv
from test_recv_heap import heap, packet

# Listens on a TCP socket (port printed first), receives heaps until the
# connection ends and prints them with the statistics.  Runs under our
# package (as a subprocess too, so both sides are treated alike) and the reference.
RECEIVER = r"""
import json, socket, sys
import spead2, spead2.recv
max_size = int(sys.argv[1])
stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
                            spead2.recv.RingStreamConfig(heaps=256, contiguous_only=False))
acceptor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
acceptor.bind(("127.0.0.1", 0))
acceptor.listen(1)
stream.add_tcp_reader(acceptor, max_size=max_size)
print(acceptor.getsockname()[1], flush=True)
heaps = [[type(h).__name__, h.cnt, [[i.id, bytes(memoryview(i)).hex()] for i in h.get_items()]] for h in stream]
stream.stop()   # the reference merges the last batch's statistics after ending the ring
stats = dict(stream.stats.items())
for timing in ("batches", "max_batch", "worker_blocked"):
    del stats[timing]
print(json.dumps({"heaps": heaps, "stats": stats}), flush=True)
"""

STEPS = [1, 3, 7, 8, 13, 100, 1000]


def _send_pieces(port, data):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        pos = 0
        k = 0
        while pos < len(data):
            step = STEPS[k % len(STEPS)]
            conn.sendall(data[pos : pos + step])
            pos += step
            k += 1


def _run(start, data, max_size):
    proc = start(RECEIVER, str(max_size))
    try:
        port = int(proc.stdout.readline())
        _send_pieces(port, data)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out)


def _start_ours(code, *args):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)


def _traffic():
    good = b"".join(sum((heap(c, 3000, 1000, [(0, 0x1000, 0), (1, 0x1001, c)]) for c in range(1, 5)), []))
    cases = {
        "normal": good,
        # A packet larger than max_size in the middle: skipped.
        "oversize": good + packet(9, 5000, 0, bytes(5000)) + b"".join(heap(10, 500, 500)),
        # Bytes that are not SPEAD after two heaps: the stream ends there.
        "bad_header": good + b"\x00" * 64 + b"".join(heap(11, 100, 100)),
        # The connection closes in the middle of a packet.
        "cut": good + b"".join(heap(12, 2000, 1000))[:1500],
        # A packet whose item pointers run past max_size.
        "huge_header": good + packet(13, 8, 0, bytes(8), [(1, 0x1000 + i, i) for i in range(600)]),
    }
    return cases


TRAFFIC = _traffic()


@pytest.mark.parametrize("case", sorted(TRAFFIC))
def test_tcp_matches_reference(case):
    data = TRAFFIC[case]
    ours = _run(_start_ours, data, 2048)
    ref = _run(refvenv.start_reference, data, 2048)
    assert ours == ref
    assert len(ours["heaps"]) >= 4


def test_tcp_port_form_and_stream_end():
    """The port form listens on bind_hostname:port; closing the connection ends the stream."""
    stream = spead2.recv.Stream(spead2.ThreadPool())
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stream.add_tcp_reader(port, bind_hostname="127.0.0.1")
    assert spead2.recv.Stream.DEFAULT_TCP_MAX_SIZE == 65536
    assert spead2.recv.Stream.DEFAULT_TCP_BUFFER_SIZE == 212992
    _send_pieces(port, b"".join(heap(1, 100, 40) + heap(2, 10, 10)))
    assert [h.cnt for h in stream] == [1, 2]
    assert stream.stats["packets"] == 4


def test_tcp_bad_hostname():
    stream = spead2.recv.Stream(spead2.ThreadPool())
    with pytest.raises(RuntimeError):
        stream.add_tcp_reader(0, bind_hostname="no.such.host.invalid")


def test_tcp_reader_on_every_stream_class():
    """add_tcp_reader is a _Stream method: chunk streams and group members have it."""
    for cls in (spead2.recv.Stream, spead2.recv.ChunkRingStream, spead2.recv.ChunkStreamGroupMember):
        assert cls.add_tcp_reader is spead2.recv._Stream.add_tcp_reader
