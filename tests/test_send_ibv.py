"""Sending with ibverbs (spead2.send.UdpIbvStream), proven through the
emulated RDMA device (tests/ibv_emulator).

The production sender runs unchanged against the emulator, which executes
each send work request as it is posted: it gathers the scatter/gather
entries through the registered memory regions (a bad one gives a local
protection error and the queue pair enters the error state, as on mlx5),
checks the frame (Ethernet/IPv4/UDP lengths, IPv4 header checksum, the
multicast MAC) and writes it to its send wire: a pcap file here, which both
our receiver and the reference's decode.  Each scenario runs its sender in a
subprocess, because the emulator reads its configuration once per process.

What this does not prove: that a real ConnectX NIC accepts the frames and
work requests (hw-tests/test_ibv_hw.py does, on hardware), DMA timing, and
line-rate behaviour.
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

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send
import spead2.send.asyncio

import emu_util
import refvenv
from emu_util import pcap_frames as _pcap_frames


def emu_env(emulator, tmp_path, **extra):
    """The emulator's environment, with the send wire into tmp_path/wire.pcap unless `extra` says otherwise."""
    extra.setdefault("SPEAD2_EMU_SEND_WIRE", "pcap:" + str(tmp_path / "wire.pcap"))
    return emu_util.emu_env(emulator, tmp_path, **extra)


def emu_stats(tmp_path):
    return emu_util.emu_stats(tmp_path, missing_ok=False)


def pcap_frames(path):
    return _pcap_frames(path, strict=True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
GROUP = "239.10.1.1"
BASE_PORT = 7200

pytestmark = pytest.mark.skipif(
    not spead2._spead2.recv._ibv_compiled, reason="spead2 was built without the ibverbs headers"
)


# ------------------------------------------------------------------ heaps

#: The heaps of a scenario, as (substream, {item id: bytes}) in send order.
#: Shared (textually) by the sender subprocess and the checks here.
HEAPS = textwrap.dedent(
    """
    import numpy as np

    SHAPES = {
        "1k": [(0x1000, 1024)],
        "64k": [(0x1000, 65536)],
        # Odd sizes: pieces that end mid-packet, items split across packets
        # (all larger than an immediate, so all are payload).
        "multi": [(0x1000, 13), (0x1001, 4000), (0x1002, 7), (0x1003, 9001)],
    }

    def heap_plan(opts):
        plan = []
        for i in range(opts["n_heaps"]):
            for sub in range(opts["n_endpoints"]):
                shape = opts["shapes"][(i + sub) % len(opts["shapes"])]
                rng = np.random.default_rng(1000 * i + sub)
                items = [(item_id, rng.integers(0, 256, size, dtype=np.uint8)) for item_id, size in SHAPES[shape]]
                plan.append((sub, items))
        return plan
    """
)
_ns = {}
exec(HEAPS, _ns)
heap_plan = _ns["heap_plan"]

SENDER = HEAPS + textwrap.dedent(
    """
    import asyncio, json, sys
    import spead2, spead2.send, spead2.send.asyncio

    opts = json.loads(sys.argv[1])
    plan = heap_plan(opts)
    # All payload lives in one pool; memory_regions decides what the NIC may read directly.
    total = sum(a.nbytes for _, items in plan for _, a in items)
    pool = np.zeros(max(total, 1), np.uint8)
    outside = []
    pos = 0
    for _, items in plan:
        for k, (item_id, a) in enumerate(items):
            if opts["regions"] == "half" and k % 2 == 1:
                copy = a.copy()            # not in any region: copied into the send slots
                outside.append(copy)
                items[k] = (item_id, copy)
            else:
                view = pool[pos:pos + a.nbytes]
                view[:] = a
                items[k] = (item_id, view)
                pos += a.nbytes
    cfg = spead2.send.UdpIbvConfig(
        endpoints=[(opts["group"], opts["base_port"] + i) for i in range(opts["n_endpoints"])],
        interface_address="127.0.0.1",
        memory_regions=[pool] if opts["regions"] != "none" else [],
        **opts.get("ibv", {}))
    # A group is as many heaps in flight as it has.
    config = spead2.send.StreamConfig(**{"max_heaps": max(4, len(plan)), **opts.get("stream", {})})
    try:
        if opts["mode"] == "asyncio":
            stream = spead2.send.asyncio.UdpIbvStream(spead2.ThreadPool(), config, cfg)
        else:
            stream = spead2.send.UdpIbvStream(spead2.ThreadPool(), config, cfg)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        sys.exit(0)
    heaps = []
    for sub, items in plan:
        heap = spead2.send.Heap()
        heap.repeat_pointers = opts.get("repeat_pointers", False)
        for item_id, a in items:
            heap.add_item(spead2.Item(item_id, "", "", shape=a.shape, dtype=a.dtype, value=a))
        heaps.append((sub, heap))
    sent = 0
    if opts["mode"] == "single":
        for sub, heap in heaps:
            sent += stream.send_heap(heap, substream_index=sub)
    elif opts["mode"] in ("round_robin", "serial"):
        mode = spead2.send.GroupMode.ROUND_ROBIN if opts["mode"] == "round_robin" else spead2.send.GroupMode.SERIAL
        refs = [spead2.send.HeapReference(heap, substream_index=sub) for sub, heap in heaps]
        sent += stream.send_heaps(refs, mode)
    elif opts["mode"] == "asyncio":
        async def run():
            futures = []
            n = 0
            for sub, heap in heaps:
                futures.append(stream.async_send_heap(heap, substream_index=sub))
                if len(futures) >= 2:
                    n += sum(await asyncio.gather(*futures))
                    futures = []
            n += sum(await asyncio.gather(*futures))
            await stream.async_flush()
            return n
        sent = asyncio.run(run())
    stream.flush()
    print(json.dumps({"sent": sent, "stats": stream._ibv_stats, "pool": pool.ctypes.data,
                      "num_substreams": stream.num_substreams}), flush=True)
    """
)


def run_sender(opts, env, timeout=120):
    opts = {"group": GROUP, "base_port": BASE_PORT, "n_endpoints": 1, "regions": "all", "mode": "single", **opts}
    proc = subprocess.run([sys.executable, "-c", SENDER, json.dumps(opts)], capture_output=True, text=True,
                          env=env, cwd=str(ROOT / "tests"), timeout=timeout)
    assert proc.returncode == 0, f"sender failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1]), proc.stderr


# --------------------------------------------------------------- the wire



def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", i, 0, len(frame), len(frame)))
            f.write(frame)


def ipv4_checksum_ok(header):
    total = sum(struct.unpack(">10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def split_by_port(tmp_path, ttl=1):
    """Check every frame's headers; write one pcap per UDP destination port."""
    by_port = {}
    for frame in pcap_frames(tmp_path / "wire.pcap"):
        dst_mac, src_mac, ethertype = frame[:6], frame[6:12], struct.unpack(">H", frame[12:14])[0]
        ip = frame[14:34]
        udp = frame[34:42]
        assert ethertype == 0x0800
        assert ip[0] == 0x45 and ipv4_checksum_ok(ip)
        assert struct.unpack(">H", ip[2:4])[0] == len(frame) - 14
        assert ip[8] == ttl and ip[9] == 17
        assert socket.inet_ntoa(ip[12:16]) == "127.0.0.1"
        dst = ip[16:20]
        assert dst_mac == bytes([0x01, 0x00, 0x5E, dst[1] & 0x7F, dst[2], dst[3]])
        assert socket.inet_ntoa(dst) == GROUP
        assert struct.unpack(">H", udp[4:6])[0] == len(frame) - 34
        by_port.setdefault(struct.unpack(">H", udp[2:4])[0], []).append(frame)
    paths = {}
    for port, frames in by_port.items():
        paths[port] = tmp_path / f"port-{port}.pcap"
        write_pcap(paths[port], frames)
    return paths


#: Decodes a pcap into [(cnt, {item id: sha256})] (items from 0x1000 up).
DECODE = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import spead2, spead2.recv

    def decode(path):
        stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=64))
        stream.add_udp_pcap_file_reader(str(path))
        out = []
        for heap in stream:
            items = {}
            for item in heap.get_items():
                if item.id >= 0x1000:
                    items[str(item.id)] = hashlib.sha256(np.asarray(item).tobytes()).hexdigest()
            out.append([heap.cnt, items])
        stream.stop()
        return out

    if __name__ == "__main__":
        print(json.dumps({p: decode(p) for p in sys.argv[1:]}))
    """
)
_dns = {"__name__": "decode"}
exec(DECODE, _dns)
decode_ours = _dns["decode"]


def expected(opts):
    plan = heap_plan({"n_endpoints": 1, **opts})
    out = {}
    for sub, items in plan:
        out.setdefault(sub, []).append(
            {str(item_id): hashlib.sha256(a.tobytes()).hexdigest() for item_id, a in items})
    return out


def check_round_trip(tmp_path, opts, reference=True, ttl=1):
    paths = split_by_port(tmp_path, ttl=ttl)
    want = expected(opts)
    assert sorted(paths) == [BASE_PORT + sub for sub in sorted(want)]
    ref = None
    if reference:
        proc = refvenv.run_reference(DECODE, *[str(p) for p in paths.values()], timeout=120)
        ref = json.loads(proc.stdout)
    for sub, heaps in want.items():
        path = paths[BASE_PORT + sub]
        ours = decode_ours(path)
        got = sorted((json.dumps(items, sort_keys=True) for _, items in ours))
        assert got == sorted(json.dumps(h, sort_keys=True) for h in heaps), f"substream {sub}"
        cnts = [cnt for cnt, _ in ours]
        assert len(set(cnts)) == len(cnts)
        if ref is not None:
            theirs = ref[str(path)]
            assert theirs == ours, f"reference, substream {sub}"


# ------------------------------------------------------------- round trips

@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "opts",
    [
        pytest.param({"shapes": ["1k"], "n_heaps": 16}, id="1k-single"),
        pytest.param({"shapes": ["64k"], "n_heaps": 4}, id="64k-single"),
        pytest.param({"shapes": ["1k", "64k", "multi"], "n_heaps": 6, "n_endpoints": 3, "mode": "round_robin"},
                     id="mixed-3ep-round-robin"),
        pytest.param({"shapes": ["multi", "64k"], "n_heaps": 4, "n_endpoints": 2, "mode": "serial"},
                     id="mixed-2ep-serial"),
        pytest.param({"shapes": ["multi"], "n_heaps": 8, "repeat_pointers": True,
                      "stream": {"max_packet_size": 9000}}, id="repeat-pointers-jumbo"),
        pytest.param({"shapes": ["64k", "1k"], "n_heaps": 4, "n_endpoints": 2, "stream": {"rate": 20e6}},
                     id="rate"),
        pytest.param({"shapes": ["1k", "multi"], "n_heaps": 8, "regions": "none"}, id="no-regions"),
        pytest.param({"shapes": ["multi", "64k"], "n_heaps": 4, "regions": "half"}, id="half-in-regions"),
        pytest.param({"shapes": ["64k", "1k"], "n_heaps": 4, "n_endpoints": 2, "mode": "asyncio"}, id="asyncio"),
        pytest.param({"shapes": ["64k"], "n_heaps": 6, "ibv": {"buffer_size": 20000, "comp_vector": -1}},
                     id="small-buffer-busy-poll"),
        pytest.param({"shapes": ["1k"], "n_heaps": 8, "ibv": {"ttl": 7, "max_poll": 1}}, id="ttl-max-poll"),
    ],
)
def test_round_trip(emulator, tmp_path, opts):
    """Heaps sent through the emulated NIC decode identically in our receiver
    and the reference's, with every frame's headers valid."""
    env = emu_env(emulator, tmp_path)
    result, stderr = run_sender(opts, env)
    assert "error" not in result, result
    n_endpoints = opts.get("n_endpoints", 1)
    assert result["num_substreams"] == n_endpoints
    stats = emu_stats(tmp_path)
    assert stats["tx_bad_frames"] == 0
    assert stats["tx_errors"] == 0 and stats["tx_wire_errors"] == 0
    assert stats["tx_frames"] == result["stats"]["packets"]
    assert stats["send_queues"] == 0       # torn down
    check_round_trip(tmp_path, opts, ttl=opts.get("ibv", {}).get("ttl", 1))


def payload_bytes(opts):
    return sum(a.nbytes for _, items in heap_plan({"n_endpoints": 1, **opts}) for _, a in items)


@pytest.mark.timeout(120)
def test_zero_copy(emulator, tmp_path):
    """Payload inside a memory region is gathered by the NIC from the user's
    memory, not copied: the emulator counts the bytes it read through each MR."""
    opts = {"shapes": ["64k", "multi"], "n_heaps": 4, "n_endpoints": 2}
    result, _ = run_sender(opts, emu_env(emulator, tmp_path))
    total = payload_bytes(opts)
    assert result["stats"]["zero_copy_bytes"] == total
    assert result["stats"]["copied_bytes"] == 0
    stats = emu_stats(tmp_path)
    by_addr = {addr: (length, nbytes) for addr, length, nbytes in stats["mr_tx"]}
    assert by_addr[result["pool"]] == (total, total)     # all payload read from the user's region
    slot_bytes = stats["tx_bytes"] - total
    other = [nbytes for addr, (_, nbytes) in by_addr.items() if addr != result["pool"]]
    assert other == [slot_bytes]                         # the send slots: headers only
    assert slot_bytes < 200 * stats["tx_frames"]
    check_round_trip(tmp_path, opts, reference=False)


@pytest.mark.timeout(120)
def test_outside_regions_copied(emulator, tmp_path):
    """Without memory regions every payload byte is copied into the send
    slots, and nothing is read from user memory."""
    opts = {"shapes": ["64k"], "n_heaps": 2, "regions": "none"}
    result, _ = run_sender(opts, emu_env(emulator, tmp_path))
    assert result["stats"]["zero_copy_bytes"] == 0
    assert result["stats"]["copied_bytes"] == payload_bytes(opts)
    stats = emu_stats(tmp_path)
    assert len(stats["mr_tx"]) == 1 and stats["mr_tx"][0][2] == stats["tx_bytes"]
    check_round_trip(tmp_path, opts, reference=False)


@pytest.mark.timeout(120)
def test_send_udp_wire(emulator, tmp_path):
    """SPEAD2_EMU_SEND_WIRE=udp:ADDR:0 forwards each frame's UDP payload to
    its own destination port: our kernel UDP receivers get every heap."""
    opts = {"shapes": ["1k", "multi"], "n_heaps": 6, "n_endpoints": 2}
    socks = []
    try:
        for sub in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", BASE_PORT + 50 + sub))
            sock.settimeout(0.5)
            socks.append(sock)
        env = emu_env(emulator, tmp_path, SPEAD2_EMU_SEND_WIRE="udp:127.0.0.1:0")
        result, _ = run_sender({**opts, "base_port": BASE_PORT + 50}, env)
        assert result["stats"]["packets"] > 0
        want = expected(opts)
        for sub, sock in enumerate(socks):
            packets = []
            try:
                while True:
                    packets.append(sock.recv(65536))
            except socket.timeout:
                pass
            stream = spead2.recv.Stream(spead2.ThreadPool())
            stream.add_buffer_reader(b"".join(packets))
            got = []
            for heap in stream:
                got.append(json.dumps({str(i.id): hashlib.sha256(np.asarray(i).tobytes()).hexdigest()
                                       for i in heap.get_items() if i.id >= 0x1000}, sort_keys=True))
            assert sorted(got) == sorted(json.dumps(h, sort_keys=True) for h in want[sub])
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------------ errors

def start_error(emulator, tmp_path, opts=None, **env_extra):
    env = emu_env(emulator, tmp_path, **env_extra)
    result, _ = run_sender({"shapes": ["1k"], "n_heaps": 1, **(opts or {})}, env)
    assert "error" in result, result
    return result


@pytest.mark.timeout(60)
def test_no_device(emulator, tmp_path):
    result = start_error(emulator, tmp_path, SPEAD2_EMU_NO_DEVICES=1)
    assert result["error"] == "RuntimeError"
    assert "no RDMA device owns the interface address 127.0.0.1" in result["message"]


@pytest.mark.timeout(60)
def test_no_cap_net_raw(emulator, tmp_path):
    result = start_error(emulator, tmp_path, SPEAD2_EMU_NO_RAW=1)
    assert result["error"] == "RuntimeError"
    assert "CAP_NET_RAW" in result["message"]


MEMLOCK_SENDER = emu_util.UNPRIVILEGED_MEMLOCK + textwrap.dedent(
    """
    import json, resource, sys
    limit = int(sys.argv[1])
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY and hard < limit:
        print(json.dumps({"skip": f"hard memlock limit {hard} is below {limit}"}))
        sys.exit(0)
    run_unprivileged(limit)
    import numpy as np, spead2, spead2.send
    region = np.zeros(int(sys.argv[2]), np.uint8)
    cfg = spead2.send.UdpIbvConfig(endpoints=[("239.10.1.1", 7200)], interface_address="127.0.0.1",
                                   buffer_size=int(sys.argv[3]), memory_regions=[region])
    try:
        stream = spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(), cfg)
        heap = spead2.send.Heap()
        heap.add_item(spead2.Item(0x1000, "", "", shape=(1024,), dtype=np.uint8, value=region[:1024]))
        print(json.dumps({"sent": stream.send_heap(heap)}))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit,region,buffer,ok", [
    (1 << 20, 8 << 20, 512 * 1024, False),     # the region alone is over the limit
    (1 << 20, 4096, 4 << 20, False),           # the send buffer is
    (6 << 20, 1 << 20, 1 << 20, True),
])
def test_memlock(emulator, tmp_path, limit, region, buffer, ok):
    """Without CAP_IPC_LOCK the send buffer, its CQ and the memory regions
    count against RLIMIT_MEMLOCK: too small a limit is reported up front,
    with what to do."""
    env = emu_env(emulator, tmp_path)
    proc = subprocess.run([sys.executable, "-c", MEMLOCK_SENDER, str(limit), str(region), str(buffer)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    if ok:
        assert result.get("sent", 0) > 0, result
    else:
        assert result["error"] == "RuntimeError"
        assert "RLIMIT_MEMLOCK" in result["message"] and "ulimit -l" in result["message"]
        assert "sender" in result["message"]


# --------------------------------------------------------------- config

def test_config_defaults():
    cfg = spead2.send.UdpIbvConfig()
    assert cfg.endpoints == []
    assert cfg.interface_address == ""
    assert cfg.buffer_size == spead2.send.UdpIbvConfig.DEFAULT_BUFFER_SIZE == 512 * 1024
    assert cfg.ttl == 1
    assert cfg.comp_vector == 0
    assert cfg.max_poll == spead2.send.UdpIbvConfig.DEFAULT_MAX_POLL == 10
    assert cfg.memory_regions == []


def test_config_properties():
    a = np.zeros(100, np.uint8)
    cfg = spead2.send.UdpIbvConfig(endpoints=[("239.1.2.3", 8888)], interface_address="10.0.0.1",
                                   buffer_size=0, ttl=4, comp_vector=-1, max_poll=3, memory_regions=[a, b"xyz"])
    assert cfg.endpoints == [("239.1.2.3", 8888)]
    assert cfg.buffer_size == 512 * 1024     # 0 means the default, as in the reference
    assert (cfg.ttl, cfg.comp_vector, cfg.max_poll) == (4, -1, 3)
    assert cfg.memory_regions[0] is a and cfg.memory_regions[1] == b"xyz"
    cfg.memory_regions.append(a)             # a copy, as the reference returns
    assert len(cfg.memory_regions) == 2
    with pytest.raises(ValueError, match="max_poll must be at least 1"):
        cfg.max_poll = 0
    with pytest.raises(ValueError, match="max_poll must be at least 1"):
        spead2.send.UdpIbvConfig(max_poll=0)
    for bad in [{"ttl": 256}, {"ttl": -1}, {"buffer_size": -1}, {"memory_regions": [5]},
                {"endpoints": [("a",)]}, {"endpoints": [("1.2.3.4", 70000)]}, {"interface_address": 5}]:
        with pytest.raises(TypeError):
            spead2.send.UdpIbvConfig(**bad)
    with pytest.raises(TypeError):
        spead2.send.UdpIbvConfig(foo=1)
    with pytest.raises(TypeError):
        spead2.send.UdpIbvConfig(1)


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({}, ValueError, "endpoints is empty"),
        ({"endpoints": [(GROUP, 8888)]}, ValueError, "interface address has not been specified"),
        ({"endpoints": [("10.1.2.3", 8888)], "interface_address": "127.0.0.1"}, ValueError,
         "endpoint is not an IPv4 multicast address"),
        ({"endpoints": [("ff02::1", 8888)], "interface_address": "127.0.0.1"}, ValueError,
         "endpoint is not an IPv4 multicast address"),
        ({"endpoints": [(GROUP, 8888)], "interface_address": "::1"}, ValueError,
         "interface address is not an IPv4 address"),
        ({"endpoints": [(GROUP, 8888)], "interface_address": "127.0.0.1", "memory_regions": [bytearray(0)]},
         ValueError, "memory region must have non-zero size"),
        ({"endpoints": [(GROUP, 8888)], "interface_address": "127.0.0.1", "memory_regions": "overlap"},
         ValueError, "memory regions overlap"),
        ({"endpoints": [(GROUP, 8888)], "interface_address": "127.0.0.1", "memory_regions": "strided"},
         ValueError, "not C-contiguous"),
        ({"endpoints": [(GROUP, 8888)], "interface_address": "10.9.9.9"}, RuntimeError,
         "Cannot assign requested address"),
    ],
)
def test_bad_config(kwargs, exc, message):
    """The reference's exception types and messages, checked before any
    device is looked for (so no emulator is needed)."""
    a = np.zeros(100, np.uint8)
    if kwargs.get("memory_regions") == "overlap":
        kwargs = {**kwargs, "memory_regions": [a[:51], a[50:]]}
    elif kwargs.get("memory_regions") == "strided":
        kwargs = {**kwargs, "memory_regions": [a[::2]]}
    with pytest.raises(exc, match=message):
        spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(),
                                 spead2.send.UdpIbvConfig(**kwargs))


def test_constructor_signature():
    with pytest.raises(TypeError):
        spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig())
    assert "udp_ibv_config" in spead2.send.UdpIbvStream.__init__.__doc__
    assert issubclass(spead2.send.asyncio.UdpIbvStream, spead2._spead2.send.UdpIbvStream)
    assert hasattr(spead2.send.asyncio.UdpIbvStream, "async_send_heap")


# ------------------------------------------------------------------ CLI

@pytest.mark.timeout(120)
def test_cli_ibv(emulator, tmp_path):
    """spead2_send --ibv sends through the emulated NIC: every frame valid,
    every heap decodable, to each destination in turn."""
    env = emu_env(emulator, tmp_path)
    env["PYTHONPATH"] = str(pathlib.Path(spead2.__file__).parent.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "spead2.tools.send", "--ibv", "--bind", "127.0.0.1", "--ttl", "3",
         "--ibv-vector", "-1", "--ibv-max-poll", "4", "--buffer", "65536", "--heaps", "6", "--heap-size", "8192",
         "--descriptors", f"{GROUP}:{BASE_PORT}", f"{GROUP}:{BASE_PORT + 1}"],
        capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    paths = split_by_port(tmp_path, ttl=3)
    assert sorted(paths) == [BASE_PORT, BASE_PORT + 1]
    for path in paths.values():
        heaps = decode_ours(path)
        # The descriptor heap and 3 data heaps each (the end-of-stream heap
        # ends the stream rather than being yielded)
        assert len(heaps) == 4
    assert emu_stats(tmp_path)["tx_bad_frames"] == 0


def test_cli_ibv_errors():
    def run(*args):
        return subprocess.run([sys.executable, "-m", "spead2.tools.send", *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(pathlib.Path(spead2.__file__).parent.parent)},
                              timeout=60)

    proc = run("--ibv", f"{GROUP}:{BASE_PORT}")
    assert proc.returncode == 2 and "--ibv needs --bind" in proc.stderr
    proc = run("--ibv-max-poll", "3", f"{GROUP}:{BASE_PORT}")
    assert proc.returncode == 2 and "apply to --ibv only" in proc.stderr
    proc = run("--ibv", "--tcp", "--bind", "127.0.0.1", f"{GROUP}:{BASE_PORT}")
    assert proc.returncode == 2 and "does not combine" in proc.stderr
    proc = run("--ibv", "--bind", "127.0.0.1", "127.0.0.1:8888")
    assert proc.returncode == 2 and "endpoint is not an IPv4 multicast address" in proc.stderr


RECOVERY_SENDER = textwrap.dedent(
    """
    import errno, json, numpy as np, spead2, spead2.send
    data = np.arange(65536, dtype=np.uint8)
    cfg = spead2.send.UdpIbvConfig(endpoints=[("239.10.1.1", 7200)], interface_address="127.0.0.1",
                                   memory_regions=[data])
    stream = spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(), cfg)
    heap = spead2.send.Heap()
    heap.add_item(spead2.Item(0x1000, "", "", shape=data.shape, dtype=data.dtype, value=data))
    out = {}
    try:
        stream.send_heap(heap)
        out["first"] = None
    except OSError as exc:
        out["first"] = [type(exc).__name__, exc.errno, str(exc)]
    out["after"] = [stream.send_heap(heap) for _ in range(3)]
    stream.flush()
    out["stats"] = stream._ibv_stats
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(60)
def test_send_error_completion_recovers(emulator, tmp_path):
    """A work request the NIC fails (fault injection: a protection error, the
    queue pair in the error state) makes send_heap raise OSError(EIO); the
    queue pair is reset and the next heaps go out intact."""
    env = emu_env(emulator, tmp_path, SPEAD2_EMU_SEND_ERROR_AT=5)
    proc = subprocess.run([sys.executable, "-c", RECOVERY_SENDER], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    name, err, message = out["first"]
    assert name == "OSError" and err == 5     # EIO
    assert "local protection error" in message
    assert "the send queue was reset" in proc.stderr      # logged
    assert len(out["after"]) == 3 and all(n > 65536 for n in out["after"])
    assert out["stats"]["error_completions"] >= 1
    stats = emu_stats(tmp_path)
    assert stats["tx_errors"] == 1 and stats["tx_bad_frames"] == 0
    # The three heaps sent after the reset decode completely (the failed one
    # is incomplete, so the receiver drops it).
    paths = split_by_port(tmp_path)
    heaps = decode_ours(paths[BASE_PORT])
    digest = hashlib.sha256(np.arange(65536, dtype=np.uint8).tobytes()).hexdigest()
    assert [items for _, items in heaps] == [{"4096": digest}] * 3


TEARDOWN_SENDER = textwrap.dedent(
    """
    import asyncio, gc, json, weakref
    import numpy as np, spead2, spead2.send, spead2.send.asyncio

    class Buf(bytearray):
        pass

    # The stream holds the regions' buffers: dropping every other reference
    # keeps the memory alive (and registered) until the stream goes.
    region = Buf(1 << 20)
    alive = weakref.ref(region)
    cfg = spead2.send.UdpIbvConfig(endpoints=[("239.10.1.1", 7200)], interface_address="127.0.0.1",
                                   memory_regions=[region])
    stream = spead2.send.asyncio.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_heaps=8), cfg)
    view = np.frombuffer(region, np.uint8)[:65536]
    view[:] = 7
    del region, cfg
    gc.collect()
    out = {"alive_with_stream": alive() is not None}
    heap = spead2.send.Heap()
    heap.add_item(spead2.Item(0x1000, "", "", shape=view.shape, dtype=view.dtype, value=view))

    async def run():
        futures = [stream.async_send_heap(heap) for _ in range(4)]
        return sum(await asyncio.gather(*futures))

    out["sent"] = asyncio.run(run())
    del heap, view, stream
    # The asyncio worker may hold the stream a moment longer.
    import time
    for _ in range(100):
        gc.collect()
        if alive() is None:
            break
        time.sleep(0.05)
    out["alive_after"] = alive() is not None
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(60)
def test_teardown_releases_regions(emulator, tmp_path):
    """The stream keeps its memory regions alive while the NIC may read them,
    and lets go of them (and tears down without hanging) when it is deleted."""
    proc = subprocess.run([sys.executable, "-c", TEARDOWN_SENDER], capture_output=True, text=True,
                          env=emu_env(emulator, tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["alive_with_stream"] is True
    assert out["sent"] > 4 * 65536
    assert out["alive_after"] is False
    stats = emu_stats(tmp_path)
    assert stats["send_queues"] == 0 and stats["tx_frames"] > 0
