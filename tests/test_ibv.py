"""ibverbs receive, proven through the emulated RDMA device (tests/ibv_emulator).

The production readers (MPRQ and plain) run unchanged: the loader opens the
emulator in place of libibverbs/librdmacm/libmlx5 when
SPEAD2_IBV_LIBRARY_OVERRIDE names it.  Because the libraries are loaded once
per process and the emulator reads its configuration once, every scenario
runs its receiver in a subprocess with its own environment.

What this does not prove: real NIC timing, DMA ordering, firmware quirks and
line-rate behaviour.  hw-tests/ covers those on a real ConnectX NIC.
"""

import hashlib
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send
from emu_util import UNPRIVILEGED_MEMLOCK, emu_env, emu_stats, pcap_frames

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEAP_SIZE = 1024
HEAPS_PER_CHUNK = 8
N_HEAPS = 64
GROUP = "239.10.0.1"
PORT = 7148

pytestmark = pytest.mark.skipif(
    not spead2._spead2.recv._ibv_compiled, reason="spead2 was built without the ibverbs headers"
)


# ----------------------------------------------------------------- traffic

def make_heaps(n=N_HEAPS, dst=(GROUP, PORT), path=None):
    """SPEAD traffic as a pcap (Ethernet/IPv4/UDP frames to dst) via our sender."""
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(heap_address_bits=48))
    ig.add_item(0x1000, "position", "", (), format=[("u", 32)])
    ig.add_item(0x1001, "payload", "", (HEAP_SIZE,), dtype=np.uint8)
    stream = spead2.send.PcapFileStream(spead2.ThreadPool(), str(path), [dst],
                                        spead2.send.StreamConfig(max_packet_size=1472))
    stream.send_heap(ig.get_heap(descriptors="all", data="none"))
    for i in range(n):
        ig["position"].value = i
        ig["payload"].value = np.full(HEAP_SIZE, (i * 7) % 256, np.uint8)
        heap = ig.get_heap(descriptors="none", data="all")
        stream.send_heap(heap)
    stream.send_heap(ig.get_end())
    del stream


def with_dst_mac(frame, mac=b"\x00" * 6):
    return mac + frame[6:]


def with_dst_port(frame, port):
    # Ethernet (14) + IPv4 without options (20): UDP dst port at 36.
    return frame[:36] + struct.pack(">H", port) + frame[38:]


# ------------------------------------------------------------- receivers

RECEIVER = UNPRIVILEGED_MEMLOCK + textwrap.dedent(
    """
    import hashlib, json, sys, threading, time
    import numpy as np
    import spead2, spead2.recv
    from spead2.recv import numba_place

    opts = json.loads(sys.argv[1])
    HEAP_SIZE, HPC = opts["heap_size"], opts["heaps_per_chunk"]
    if opts.get("memlock") is not None:
        run_unprivileged(opts["memlock"])   # as an unprivileged user would run

    # Heap counter placement on the position item (0x1000): position i goes to
    # chunk i // HPC at heap index i % HPC.
    llc = numba_place.heap_counter(heap_size=HEAP_SIZE, heaps_per_chunk=HPC, cnt_first=0)
    n_chunks = 8
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=4, place=llc),
        data_ring, free_ring)
    for _ in range(n_chunks):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HPC, np.uint8),
                                                data=np.zeros(HPC * HEAP_SIZE, np.uint8)))
    try:
        if opts["source"] == "pcap":
            stream.add_udp_pcap_file_reader(opts["pcap"])
        elif opts["source"] == "udp-override":
            stream.add_udp_reader(opts["port"], bind_hostname=opts["host"])
        else:
            cfg = spead2.recv.UdpIbvConfig(**opts["config"])
            stream.add_udp_ibv_reader(cfg)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        sys.exit(0)
    print("READY " + json.dumps(stream._ibv_reader_kinds()), flush=True)
    if opts.get("stop_after_chunks"):
        seen = 0
        for chunk in data_ring:
            stream.add_free_chunk(chunk)
            seen += 1
            if seen >= opts["stop_after_chunks"]:
                break
        t0 = time.monotonic()
        stream.stop()
        print(json.dumps({"stopped_after": seen, "stop_seconds": time.monotonic() - t0}), flush=True)
        sys.exit(0)
    chunks = []
    for chunk in data_ring:
        chunks.append({"id": chunk.chunk_id, "present": chunk.present.tolist(),
                       "sha": hashlib.sha256(chunk.data.tobytes()).hexdigest()
                       if chunk.present.any() else None})
        chunk.data[:] = 0
        stream.add_free_chunk(chunk)
    stats = dict(stream.stats.items())
    ibv = stream._ibv_reader_stats()
    stream.stop()
    print(json.dumps({"chunks": chunks, "stats": stats, "ibv": ibv}), flush=True)
    """
)


def start_receiver(opts, env):
    opts = {"heap_size": HEAP_SIZE, "heaps_per_chunk": HEAPS_PER_CHUNK, **opts}
    # stderr goes to a file: stdout is read line by line, and a pipe for
    # stderr could fill up and block the receiver.
    import tempfile

    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, json.dumps(opts)], stdout=subprocess.PIPE,
                            stderr=err, text=True, env=env, cwd=str(ROOT / "tests"))
    proc.err_file = err
    return proc


def stderr_of(proc):
    proc.err_file.seek(0)
    return proc.err_file.read()


def read_ready(proc, timeout=60):
    """Wait for the READY line (or an error object); returns (kinds, error)."""
    line = proc.stdout.readline()
    if line.startswith("READY "):
        return json.loads(line[6:]), None
    proc.wait(timeout=timeout)
    err = stderr_of(proc)
    try:
        return None, json.loads(line)
    except json.JSONDecodeError:
        raise AssertionError(f"receiver failed: {line}\n{err}") from None


def finish(proc, timeout=60):
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    err = stderr_of(proc)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines, f"receiver printed no result\n{err}"
    return json.loads(lines[-1]), err


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_chunks(pcap, tmp_path):
    """The same traffic through the pcap reader: what every ibverbs run must match."""
    proc = start_receiver({"source": "pcap", "pcap": str(pcap)}, dict(os.environ))
    read_ready(proc)
    result, _ = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS
    return result["chunks"]


@pytest.fixture(scope="module")
def multicast_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("ibv") / "multicast.pcap"
    make_heaps(path=path)
    return path


# ------------------------------------------------------------------ tests

@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
@pytest.mark.parametrize("comp_vector", [0, -1], ids=["interrupt", "polling"])
def test_multicast_pcap_wire(emulator, tmp_path, multicast_pcap, mprq, comp_vector):
    """Multicast traffic replayed on the emulated wire gives the same chunks as pcap replay."""
    expected = reference_chunks(multicast_pcap, tmp_path)
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1)
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    config = {"endpoints": [(GROUP, PORT)], "interface_address": "127.0.0.1", "comp_vector": comp_vector}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq" if mprq else "plain"]
    result, _ = finish(proc)
    assert result["chunks"] == expected
    assert result["stats"]["malformed_packets"] == 0
    stats = emu_stats(tmp_path)
    assert stats.get("delivered", 0) == stats.get("received", stats.get("delivered", 0))
    if mprq:
        assert stats.get("wqes_completed", 0) >= 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_unicast_udp_wire_and_flow_filtering(emulator, tmp_path, mprq):
    """Unicast frames arrive; frames for another port or address are not delivered."""
    pcap = tmp_path / "unicast.pcap"
    make_heaps(dst=("127.0.0.1", PORT), path=pcap)
    frames = [with_dst_mac(f) for f in pcap_frames(pcap)]   # lo's MAC, as the flow rule uses
    wire_port = free_udp_port()
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"udp:127.0.0.1:{wire_port}")
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    config = {"endpoints": [("127.0.0.1", PORT)], "interface_address": "127.0.0.1", "comp_vector": 0}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    wait_for(lambda: emu_stats(tmp_path).get("rx_ready") and emu_stats(tmp_path).get("flows"),
             what="the emulated queue to be ready")
    stray = [with_dst_port(f, PORT + 1) for f in frames[1:6]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wire:
        for f in stray:
            wire.sendto(f, ("127.0.0.1", wire_port))
        for i, f in enumerate(frames):
            wire.sendto(f, ("127.0.0.1", wire_port))
            if i % 16 == 15:
                time.sleep(0.002)   # bounded load: let the receiver keep up
    result, _ = finish(proc)
    got = sum(sum(c["present"]) for c in result["chunks"])
    assert got == N_HEAPS
    stats = emu_stats(tmp_path)
    assert stats["no_flow"] >= len(stray)


#: Two streams in one process (the emulated device is per process), each with
#: its own ibverbs reader; reports the heaps each one received.
TWO_READERS = RECEIVER.split("n_chunks = 8")[0] + textwrap.dedent(
    """
    def make_stream():
        data_ring, free_ring = spead2.recv.ChunkRingbuffer(8), spead2.recv.ChunkRingbuffer(8)
        stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=4),
            spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=4, place=llc),
            data_ring, free_ring)
        for _ in range(8):
            stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HPC, np.uint8),
                                                    data=np.zeros(HPC * HEAP_SIZE, np.uint8)))
        return stream, data_ring

    streams = []
    for cfg in opts["configs"]:
        stream, ring = make_stream()
        stream.add_udp_ibv_reader(spead2.recv.UdpIbvConfig(**cfg))
        streams.append((stream, ring))
    counts = [0] * len(streams)

    def consume(i):
        stream, ring = streams[i]
        for chunk in ring:
            counts[i] += int(chunk.present.sum())
            stream.add_free_chunk(chunk)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    print("READY " + json.dumps([s._ibv_reader_kinds() for s, _ in streams]), flush=True)
    for i in opts["expect_end"]:
        threads[i].join()          # ended by the stop heap
    for stream, _ in streams:
        stream.stop()
    for t in threads:
        t.join()
    print(json.dumps({"counts": counts}), flush=True)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
@pytest.mark.parametrize("second", ["same-group", "wildcard"])
def test_two_readers_on_one_device(emulator, tmp_path, mprq, second):
    """Two readers with identical rules (the same group and port) each get
    every packet; a reader with an overlapping wildcard rule (any address on
    that port) takes them all and the exact reader starves (as ConnectX-5
    steering is reported to do; hw-tests/ checks it on a NIC)."""
    pcap = tmp_path / "multicast.pcap"
    make_heaps(path=pcap)
    frames = pcap_frames(pcap)
    wire_port = free_udp_port()
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"udp:127.0.0.1:{wire_port}")
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    exact = {"endpoints": [(GROUP, PORT)], "interface_address": "127.0.0.1", "comp_vector": 0}
    other = exact if second == "same-group" else {**exact, "endpoints": [("", PORT)]}
    expect_end = [0, 1] if second == "same-group" else [1]
    opts = {"heap_size": HEAP_SIZE, "heaps_per_chunk": HEAPS_PER_CHUNK, "configs": [exact, other],
            "expect_end": expect_end}
    import tempfile

    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", TWO_READERS, json.dumps(opts)], stdout=subprocess.PIPE,
                            stderr=err, text=True, env=env, cwd=str(ROOT / "tests"))
    proc.err_file = err
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == [["mprq" if mprq else "plain"]] * 2
    wait_for(lambda: emu_stats(tmp_path).get("rx_ready") == 2 and emu_stats(tmp_path).get("flows") == 2,
             what="both emulated queues to be ready")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wire:
        for i, f in enumerate(frames):
            wire.sendto(f, ("127.0.0.1", wire_port))
            if i % 16 == 15:
                time.sleep(0.002)   # bounded load: let the receivers keep up
    result, _ = finish(proc)
    if second == "same-group":
        assert result["counts"] == [N_HEAPS, N_HEAPS]
    else:
        assert result["counts"] == [0, N_HEAPS]


@pytest.mark.timeout(120)
def test_buffer_exhaustion_under_burst(emulator, tmp_path):
    """A burst larger than the receive buffer: frames are dropped by the NIC
    (counted), the receiver survives and still sees the end of the stream."""
    pcap = tmp_path / "burst.pcap"
    make_heaps(n=2000, dst=("127.0.0.1", PORT), path=pcap)
    frames = [with_dst_mac(f) for f in pcap_frames(pcap)]
    wire_port = free_udp_port()
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"udp:127.0.0.1:{wire_port}", SPEAD2_EMU_NO_MPRQ=1)
    # Plain reader with a 4-slot buffer.
    config = {"endpoints": [("127.0.0.1", PORT)], "interface_address": "127.0.0.1", "comp_vector": 0,
              "buffer_size": 4 * (9200 + 42)}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    _, error = read_ready(proc)
    assert error is None, error
    wait_for(lambda: emu_stats(tmp_path).get("rx_ready") and emu_stats(tmp_path).get("flows"),
             what="the emulated queue to be ready")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wire:
        wire.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        for f in frames[:-1]:
            wire.sendto(f, ("127.0.0.1", wire_port))
        time.sleep(0.5)
        wire.sendto(frames[-1], ("127.0.0.1", wire_port))   # the stop heap, after the burst
    result, _ = finish(proc)
    stats = emu_stats(tmp_path)
    got = sum(sum(c["present"]) for c in result["chunks"])
    assert stats["no_buffer"] > 0
    assert got < 2000
    assert got + stats["no_buffer"] <= 2000 + 1


@pytest.mark.timeout(120)
def test_stop_while_traffic_flows(emulator, tmp_path):
    pcap = tmp_path / "flow.pcap"
    make_heaps(n=4000, dst=("127.0.0.1", PORT), path=pcap)
    frames = [with_dst_mac(f) for f in pcap_frames(pcap)][1:-1]   # no descriptors, no stop heap
    wire_port = free_udp_port()
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"udp:127.0.0.1:{wire_port}")
    config = {"endpoints": [("127.0.0.1", PORT)], "interface_address": "127.0.0.1", "comp_vector": -1}
    proc = start_receiver({"source": "ibv", "config": config, "stop_after_chunks": 3}, env)
    _, error = read_ready(proc)
    assert error is None, error
    wait_for(lambda: emu_stats(tmp_path).get("rx_ready") and emu_stats(tmp_path).get("flows"),
             what="the emulated queue to be ready")
    done = threading.Event()

    def blast():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wire:
            while not done.is_set():
                for f in frames[:400]:
                    wire.sendto(f, ("127.0.0.1", wire_port))
                time.sleep(0.01)

    sender = threading.Thread(target=blast)
    sender.start()
    try:
        result, _ = finish(proc, timeout=60)
    finally:
        done.set()
        sender.join()
    assert result["stopped_after"] == 3
    assert result["stop_seconds"] < 20  # only a hang (a stop that waits on the blasted queue) takes this long


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case, env_extra",
    [
        ("mprq", {}),
        ("plain", {"SPEAD2_EMU_NO_MPRQ": 1}),
        # MPW_ALLOWED is a send-side flag: without it the MPRQ reader is still used.
        ("mprq", {"SPEAD2_EMU_NO_MPW": 1}),
        # Construction fails part-way: after the CQ, WQ and indirection table
        # (no raw QP), or after the QP (the MR is too large to register).
        ("mprq-no-raw", {"SPEAD2_EMU_NO_RAW": 1}),
        ("mprq-mr-fails", {"SPEAD2_EMU_MAX_MR_SIZE": 1 << 20}),
        ("plain-no-raw", {"SPEAD2_EMU_NO_MPRQ": 1, "SPEAD2_EMU_NO_RAW": 1}),
        ("plain-no-flow", {"SPEAD2_EMU_NO_MPRQ": 1, "SPEAD2_EMU_NO_FLOW": 1}),
    ],
)
def test_teardown_order_leaves_nothing_busy(emulator, tmp_path, multicast_pcap, case, env_extra):
    """Every verbs object goes before what it depends on -- after a normal run
    and when construction fails part-way -- so the device never refuses a
    destroy with EBUSY (as the kernel would), and no rule or queue is left."""
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  **env_extra)
    config = {"endpoints": [(GROUP, PORT)], "interface_address": "127.0.0.1", "comp_vector": 0}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    kinds, error = read_ready(proc)
    if case in ("mprq", "plain"):
        assert error is None, error
        assert kinds == [case]
        result, err = finish(proc)
        assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS
    else:
        assert error is not None
        proc.wait(timeout=60)
        err = stderr_of(proc)
    assert "EBUSY" not in err, err
    stats = emu_stats(tmp_path)
    assert stats.get("flows", 0) == 0 and stats.get("rx_ready", 0) == 0, stats


# ------------------------------------------------- error completions, queue errors

def run_fault_case(emulator, tmp_path, multicast_pcap, mprq, comp_vector=0, **faults):
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  **faults)
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    config = {"endpoints": [(GROUP, PORT)], "interface_address": "127.0.0.1", "comp_vector": comp_vector}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq" if mprq else "plain"]
    return finish(proc, timeout=60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
@pytest.mark.parametrize("comp_vector", [0, -1], ids=["interrupt", "polling"])
def test_error_completion_resets_queue(emulator, tmp_path, multicast_pcap, mprq, comp_vector):
    """An error completion (junk byte_len, queue left in the error state) is
    not counted as strides: the reader resets the queue, re-posts its buffers
    and goes on; only the frame that failed is lost."""
    # Frame 1 carries the descriptors, frames 2..65 heaps 0..63: frame 10 is heap 8.
    result, err = run_fault_case(emulator, tmp_path, multicast_pcap, mprq, comp_vector,
                                 SPEAD2_EMU_ERROR_FRAMES=10)
    present = [p for c in sorted(result["chunks"], key=lambda c: c["id"]) for p in c["present"]]
    assert sum(present) == N_HEAPS - 1
    assert present[8] == 0
    assert result["stats"]["malformed_packets"] == 0
    (ibv,) = result["ibv"]
    assert ibv["recoveries"] == 1
    assert ibv["error_completions"] >= 1
    assert not ibv["failed"]
    assert "reset it and re-posted" in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_persistent_queue_errors_stop_the_stream(emulator, tmp_path, multicast_pcap, mprq):
    """A queue that fails again after every reset: the reader gives up and
    stops the stream with a clear error instead of spinning."""
    result, err = run_fault_case(emulator, tmp_path, multicast_pcap, mprq, SPEAD2_EMU_ERROR_FRAMES="5+")
    (ibv,) = result["ibv"]
    assert ibv["failed"]
    assert "in a row without receiving a packet" in ibv["error"]
    assert ibv["recoveries"] == 8
    assert "stopped the stream" in err
    assert sum(sum(c["present"]) for c in result["chunks"]) < N_HEAPS


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
@pytest.mark.parametrize("comp_vector", [0, -1], ids=["interrupt", "polling"])
def test_fatal_cq_error_stops_the_stream(emulator, tmp_path, multicast_pcap, mprq, comp_vector):
    """A fatal CQ error (IBV_EVENT_CQ_ERR on the async event fd; no completion
    ever arrives again) stops the stream with a clear error, also when the
    reader sleeps on its completion channel."""
    result, err = run_fault_case(emulator, tmp_path, multicast_pcap, mprq, comp_vector,
                                 SPEAD2_EMU_CQ_ERROR_AT=5)
    (ibv,) = result["ibv"]
    assert ibv["failed"]
    assert "IBV_EVENT_CQ_ERR" in ibv["error"]
    assert ibv["async_events"] >= 1
    assert "stopped the stream" in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_old_libibverbs_flow_abi(emulator, tmp_path, multicast_pcap, mprq):
    """A libibverbs older than the v13 ABI keeps the flow verbs in the legacy
    verbs_context slots: the reader falls back to them."""
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  SPEAD2_EMU_OLD_FLOW_ABI=1)
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    proc = start_receiver({"source": "ibv", "config": {**BASE, "comp_vector": 0}}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq" if mprq else "plain"]
    result, err = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS
    assert "EBUSY" not in err    # flows were destroyed through the legacy slot too


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_buffer_registration_and_queue_setup(emulator, tmp_path, mprq):
    """Receive memory is registered with relaxed ordering (ibv_reg_mr_iova2)
    and marked MADV_DONTFORK; the plain QP has no send queue."""
    env = emu_env(emulator, tmp_path)
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    proc = start_receiver({"source": "ibv", "config": {**BASE, "comp_vector": 0}}, env)
    _, error = read_ready(proc)
    assert error is None, error
    try:
        wait_for(lambda: emu_stats(tmp_path).get("flows"), what="the flow rule")
        stats = emu_stats(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert stats["mrs_relaxed"] == 1
    assert stats["mrs_dontfork"] == 1
    assert stats["send_queues"] == 0


@pytest.mark.timeout(120)
def test_plain_slots_have_room_for_a_vlan_tag(emulator, tmp_path, multicast_pcap):
    """With max_size equal to the largest payload, 802.1Q-tagged frames still
    fit the plain reader's slots."""
    frames = pcap_frames(multicast_pcap)
    tagged = [f[:12] + b"\x81\x00\x00\x05" + f[12:] for f in frames]
    wire_port = free_udp_port()
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"udp:127.0.0.1:{wire_port}", SPEAD2_EMU_NO_MPRQ=1)
    config = {**BASE, "comp_vector": 0, "max_size": max(len(f) for f in frames) - 42}
    proc = start_receiver({"source": "ibv", "config": config}, env)
    _, error = read_ready(proc)
    assert error is None, error
    wait_for(lambda: emu_stats(tmp_path).get("rx_ready") and emu_stats(tmp_path).get("flows"),
             what="the emulated queue to be ready")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wire:
        for i, f in enumerate(tagged):
            wire.sendto(f, ("127.0.0.1", wire_port))
            if i % 16 == 15:
                time.sleep(0.002)   # bounded load: let the receiver keep up
    result, _ = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS
    assert result["ibv"][0]["error_completions"] == 0


# ------------------------------------------------------------- locked memory

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_memlock_limit_gives_clear_error(emulator, tmp_path, mprq):
    """Without CAP_IPC_LOCK, pinned memory counts against RLIMIT_MEMLOCK (the
    emulated device charges it as the kernel does): a limit too small for the
    buffer and CQ is reported up front with what to do."""
    env = emu_env(emulator, tmp_path)
    if not mprq:
        env["SPEAD2_EMU_NO_MPRQ"] = "1"
    proc = start_receiver({"source": "ibv", "config": BASE, "memlock": 1 << 20}, env)
    _, error = read_ready(proc)
    assert error is not None
    assert error["error"] == "RuntimeError"
    assert "RLIMIT_MEMLOCK" in error["message"]
    assert "ulimit -l" in error["message"]
    assert "LimitMEMLOCK" in error["message"]


@pytest.mark.timeout(120)
def test_memlock_limit_large_enough(emulator, tmp_path, multicast_pcap):
    """A 2 MiB buffer and its 2 MiB CQ (one 64-byte entry per 64-byte stride)
    fit under a 6 MiB limit (raising a hard limit needs privileges)."""
    import resource

    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] not in (resource.RLIM_INFINITY,) \
            and resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] < (6 << 20):
        pytest.skip("hard RLIMIT_MEMLOCK below 6 MiB")
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1)
    config = {**BASE, "comp_vector": 0, "buffer_size": 2 << 20}
    proc = start_receiver({"source": "ibv", "config": config, "memlock": 6 << 20}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq"]
    result, _ = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS


# ----------------------------------------------------------- error messages

def run_error_case(emulator, tmp_path, config, **env_extra):
    env = emu_env(emulator, tmp_path, **env_extra)
    proc = start_receiver({"source": "ibv", "config": config}, env)
    kinds, error = read_ready(proc)
    if error is None:
        proc.kill()
        proc.wait()
    return error


BASE = {"endpoints": [(GROUP, PORT)], "interface_address": "127.0.0.1"}


@pytest.mark.timeout(60)
def test_no_device_owns_address(emulator, tmp_path):
    error = run_error_case(emulator, tmp_path, {**BASE, "interface_address": "127.0.0.2"})
    assert error["error"] == "RuntimeError"
    assert "no RDMA device owns the interface address 127.0.0.2" in error["message"]


@pytest.mark.timeout(60)
def test_no_flow_steering(emulator, tmp_path):
    error = run_error_case(emulator, tmp_path, BASE, SPEAD2_EMU_NO_MPRQ=1, SPEAD2_EMU_NO_FLOW=1)
    assert error["error"] == "ValueError"
    assert "does not support flow steering" in error["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mprq", [True, False], ids=["mprq", "plain"])
def test_missing_cap_net_raw(emulator, tmp_path, mprq):
    extra = {"SPEAD2_EMU_NO_RAW": 1}
    if not mprq:
        extra["SPEAD2_EMU_NO_MPRQ"] = 1
    error = run_error_case(emulator, tmp_path, BASE, **extra)
    assert error["error"] == "RuntimeError"
    assert "CAP_NET_RAW" in error["message"]


@pytest.mark.timeout(60)
def test_library_missing(tmp_path):
    env = dict(os.environ, SPEAD2_IBV_LIBRARY_OVERRIDE=str(tmp_path / "no-such-libibverbs.so"))
    proc = start_receiver({"source": "ibv", "config": BASE}, env)
    _, error = read_ready(proc)
    assert error["error"] == "RuntimeError"
    assert "rdma-core" in error["message"]
    assert "no-such-libibverbs.so" in error["message"]


@pytest.mark.timeout(120)
def test_device_limits_shrink_buffer(emulator, tmp_path, multicast_pcap):
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  SPEAD2_EMU_MAX_CQE=3 * 16384)
    proc = start_receiver({"source": "ibv", "config": {**BASE, "comp_vector": 0}}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq"]
    result, err = finish(proc)
    assert "Reducing ibverbs buffer from 16777216 to 3145728 bytes" in err
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS


@pytest.mark.timeout(120)
def test_force_plain_reader(emulator, tmp_path, multicast_pcap):
    """SPEAD2_IBV_NO_MPRQ=1 uses the plain reader on a device that has MPRQ
    (hw-tests use it to reach the plain reader's error paths on a NIC)."""
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  SPEAD2_IBV_NO_MPRQ=1)
    proc = start_receiver({"source": "ibv", "config": {**BASE, "comp_vector": 0}}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["plain"]
    result, _ = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS
    env["SPEAD2_IBV_NO_MPRQ"] = "0"
    proc = start_receiver({"source": "ibv", "config": BASE}, env)
    kinds, error = read_ready(proc)
    assert kinds == ["mprq"]
    proc.kill()
    proc.wait()


@pytest.mark.timeout(120)
def test_ibv_interface_override(emulator, tmp_path, multicast_pcap):
    """SPEAD2_IBV_INTERFACE turns add_udp_reader into an ibverbs reader."""
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_WIRE=f"pcap:{multicast_pcap}", SPEAD2_EMU_PCAP_LOSSLESS=1,
                  SPEAD2_IBV_INTERFACE="127.0.0.1", SPEAD2_IBV_COMP_VECTOR=-1)
    proc = start_receiver({"source": "udp-override", "host": GROUP, "port": PORT}, env)
    kinds, error = read_ready(proc)
    assert error is None, error
    assert kinds == ["mprq"]
    result, _ = finish(proc)
    assert sum(sum(c["present"]) for c in result["chunks"]) == N_HEAPS


# --------------------------------------------- config validation (in-process)

def test_config_defaults():
    config = spead2.recv.UdpIbvConfig()
    assert config.endpoints == []
    assert config.interface_address == ""
    assert config.buffer_size == spead2.recv.UdpIbvConfig.DEFAULT_BUFFER_SIZE == 16 * 1024 * 1024
    assert config.max_size == spead2.recv.UdpIbvConfig.DEFAULT_MAX_SIZE == 9200
    assert config.comp_vector == 0
    assert config.max_poll == spead2.recv.UdpIbvConfig.DEFAULT_MAX_POLL == 10


def test_config_kwargs_and_validation():
    config = spead2.recv.UdpIbvConfig(endpoints=[("239.1.2.3", 7148)], interface_address="10.0.0.1",
                                      buffer_size=0, comp_vector=-1)
    assert config.endpoints == [("239.1.2.3", 7148)]
    assert config.buffer_size == spead2.recv.UdpIbvConfig.DEFAULT_BUFFER_SIZE   # 0 = default
    with pytest.raises(ValueError):
        config.max_size = 0
    with pytest.raises(ValueError):
        config.max_poll = 0
    with pytest.raises(TypeError):
        spead2.recv.UdpIbvConfig(bogus=1)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"endpoints": [], "interface_address": "10.0.0.1"}, "endpoints is empty"),
        ({"endpoints": [("239.1.2.3", 7148)]}, "interface address"),
        ({"endpoints": [("239.1.2.3", 7148)], "interface_address": "0.0.0.0"}, "unspecified"),
        ({"endpoints": [("::1", 7148)], "interface_address": "10.0.0.1"}, "is not an IPv4 address"),
        ({"endpoints": [("239.1.2.3", 7148)], "interface_address": "::1"}, "is not an IPv4 address"),
    ],
)
def test_config_errors_before_touching_a_device(config, message):
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(),
        spead2.recv.ChunkStreamConfig(place=_dummy_place()), spead2.recv.ChunkRingbuffer(2),
        spead2.recv.ChunkRingbuffer(2))
    with pytest.raises(ValueError, match=message):
        stream.add_udp_ibv_reader(spead2.recv.UdpIbvConfig(**config))
    stream.stop()


def _dummy_place():
    import ctypes

    scipy = pytest.importorskip("scipy")
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)
    _dummy_place.keep = proto(lambda data, size: None)
    return scipy.LowLevelCallable(_dummy_place.keep, signature="void (void *, size_t)")
