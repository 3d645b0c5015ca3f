#!/usr/bin/env python3
"""Kernel UDP receive on loopback: our receiver against the reference spead2.

Usage::

    python3 bench/bench_udp.py [--json FILE] [options]

The sender is always ours: ``spead2.send.UdpStream`` (sendmmsg + UDP GSO) in
this process, at a fixed rate.  The receiver is a worker subprocess, either
ours (this interpreter) or the reference spead2 4.5.1 (``--ref-python``,
default: the virtualenv of ``spead2.tools.reference``), running the same code: a
``ChunkRingStream`` with ``add_udp_reader`` on 127.0.0.1 and the same numba
place callback (``spead2.recv.numba_place.heap_counter`` of this source tree,
loaded by path through ``bench_tool``: chunk = heap counter // heaps per chunk).  Ours and the
reference take turns, one run after the other.

Two measurements per payload size (1 KiB and 8 KiB of payload per packet,
heaps of 64 KiB):

(a) receiver CPU time per packet at the same offered load: the worker
    reads ``getrusage(RUSAGE_SELF)`` (user + system time of all its threads)
    when its socket is ready and again when the end-of-stream heap has been
    processed, and divides by the packets the stream processed.  The load
    is half the lower of the two lossless rates found by (b) (half the lowest
    rung if a receiver lost heaps even there), unless ``--cpu-rate`` says
    otherwise, so that both receivers keep up.
(b) the highest rate received without loss: a ladder of sending rates
    (``--rates``, by default 0.2 to 0.9 of the sender's unthrottled rate),
    each run ``--repeats`` times per implementation, the two taking turns.
    A rung passes if every one of its runs delivered every heap; the result
    is the highest rung below the first that failed.  A single run decides
    nothing on a shared machine: a few milliseconds without CPU overflow any
    socket buffer at these rates, for either receiver, so the table also
    shows how many runs of each rung were lossless.  If the top rung passes
    and an unthrottled run was lossless too, the receiver is faster than the
    sender (``limited_by_sender`` in the JSON).

The sender paces 1 MiB bursts with catch-up limited to 1.25 times the rate:
after a hiccup of its own it must not flood the receiver at full speed (that
would measure the sender, not the receiver).  ``--force-buffer`` gives both
receivers the same socket made with SO_RCVBUFFORCE (needs CAP_NET_ADMIN), to
model a machine tuned as the docs recommend (``net.core.rmem_max`` ≥ 8 MiB).

This file is also the worker (``--worker``): only the standard library is
imported at module level, and the worker imports whichever spead2 its
interpreter has.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time

import bench_tool

DEFAULT_REF_PYTHON = None   # the virtualenv of spead2.tools.reference, made on first use
HEAP_SIZE = 64 * 1024
HEAPS_PER_CHUNK = 16
MAX_CHUNKS = 4
FREE_CHUNKS = 12
#: Item pointers in every packet (HEAP_CNT, HEAP_LENGTH, PAYLOAD_OFFSET,
#: PAYLOAD_LENGTH and the payload item; repeated in every packet so that all
#: packets of a heap carry the same amount of payload).
POINTERS_PER_PACKET = 5
PAYLOAD_ID = 0x3000
PAYLOADS = {"1k": 1024, "8k": 8192}
#: A step whose sender fell short of this fraction of its target rate (the
#: machine was busy with something else) is run again, up to SHORTFALL_RETRIES times.
SHORTFALL = 0.9
SHORTFALL_RETRIES = 2
#: Lowest rate the ladder considers (bytes/s of heap payload).
MIN_RATE = 20e6
#: Rungs of the rate ladder, as fractions of the sender's unthrottled rate.
LADDER_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Receiver socket buffer (the reference's default; clipped to net.core.rmem_max for both).
RECV_BUFFER = 8 * 1024 * 1024
#: Our sender's pacing: 1 MiB bursts, catching up at no more than 1.25x the
#: rate after a delay.  Small bursts (the 64 KiB default) cannot reach high
#: rates here: every burst ends in a sleep that overshoots by ~50 us on this
#: VM.  An unbounded catch-up ratio reaches them but turns every stall of the
#: sender into a burst at its full speed, which the receiver is blamed for.
SENDER_BURST_SIZE = 1024 * 1024
SENDER_BURST_RATE_RATIO = 1.25
#: Linux's SO_RCVBUFFORCE (not in Python's socket module).
SO_RCVBUFFORCE = 33


# ---------------------------------------------------------------------------
# Worker (runs under either implementation)


def worker_main(args):
    if args.cpus:
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
    import logging
    import resource
    import socket

    import numpy as np

    import spead2
    import spead2.recv

    heap_size = args.heap_size
    hpc = HEAPS_PER_CHUNK
    llc = bench_tool.load("worker").load_numba_place().heap_counter(heap_size=heap_size, heaps_per_chunk=hpc)
    pool = spead2.ThreadPool(1)
    # Both report the clipped socket buffer on every run; the driver reports rmem_max once.
    logging.getLogger("spead2").setLevel(logging.ERROR)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"hello": spead2.__version__})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] != "run":
            continue  # a "stop" that arrived after the run had ended by itself
        stream = spead2.recv.ChunkRingStream(
            pool,
            spead2.recv.StreamConfig(max_heaps=4),
            spead2.recv.ChunkStreamConfig(
                items=llc.items, max_chunks=MAX_CHUNKS, place=llc),
            spead2.recv.ChunkRingbuffer(MAX_CHUNKS),
            spead2.recv.ChunkRingbuffer(FREE_CHUNKS),
        )
        # Fresh chunks each run (a stopped stream keeps the ones it held); the
        # memory is touched here, outside the measurement.
        for _ in range(FREE_CHUNKS):
            stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(hpc, np.uint8),
                                                    data=np.ones(hpc * heap_size, np.uint8)))
        sock = None
        socket_buffer = None
        if cmd.get("force_buffer"):
            # The same socket for either implementation: made here with
            # SO_RCVBUFFORCE (needs CAP_NET_ADMIN), so that its buffer is not
            # clipped to net.core.rmem_max, and adopted by the stream.
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, cmd["force_buffer"])
            sock.bind(("127.0.0.1", cmd["port"]))
            socket_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            stream.add_udp_reader(sock, 9200)
        else:
            stream.add_udp_reader(cmd["port"], 9200, RECV_BUFFER, bind_hostname="127.0.0.1")
        ring = stream.data_ringbuffer
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        reply({"ready": True})
        heaps = 0
        stopped_by_driver = False
        while True:
            readable, _, _ = select.select([ring.data_fd, sys.stdin], [], [], 1.0)
            if sys.stdin in readable and not stopped_by_driver:
                # Only "stop" can come now: the end-of-stream heap was lost.
                sys.stdin.readline()
                stopped_by_driver = True
                stream.stop()
            try:
                chunk = ring.get_nowait()
            except spead2.Empty:
                continue
            except spead2.Stopped:
                break
            heaps += int(np.count_nonzero(chunk.present))
            stream.add_free_chunk(chunk)
        after = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = time.monotonic() - t0
        stats = dict(stream.stats.items())
        stream.stop()
        if sock is not None:
            sock.close()
        reply({
            "heaps": heaps,
            "packets": stats["packets"],
            "user": after.ru_utime - before.ru_utime,
            "system": after.ru_stime - before.ru_stime,
            "elapsed": elapsed,
            "stopped_by_driver": stopped_by_driver,
            "socket_buffer": socket_buffer,   # as the kernel reports it (twice what was set)
            "stats": stats,
        })


# ---------------------------------------------------------------------------
# Driver


class Worker:
    """A receiver subprocess of one implementation, reused for every run."""

    def __init__(self, name, python, heap_size, cpus=None, force_buffer=0):
        self.name = name
        self.force_buffer = force_buffer
        cmd = [python, os.path.abspath(__file__), "--worker", "--heap-size", str(heap_size)]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        self.version = self._read(120)["hello"]

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.name} worker did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def _send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def run(self, sender, port, rate, n_heaps):
        """One run: the worker listens, we send `n_heaps` at `rate`; returns its result."""
        self._send({"cmd": "run", "port": port, "force_buffer": self.force_buffer})
        self._read(30)  # ready
        sent_at = time.monotonic()
        offered = sender.send(port, rate, n_heaps)
        send_time = time.monotonic() - sent_at
        ready, _, _ = select.select([self.proc.stdout], [], [], max(2.0, send_time))
        if not ready:
            self._send({"cmd": "stop"})
        result = self._read(30)
        result["offered_rate"] = offered
        result["sent_heaps"] = n_heaps
        result["lossless"] = result["heaps"] >= n_heaps
        return result

    def close(self):
        try:
            self._send({"cmd": "quit"})
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


class Sender:
    """Our UdpStream, sending one reused 64 KiB heap with increasing counters."""

    def __init__(self, payload):
        import numpy as np

        import spead2
        import spead2.send

        self.spead2 = spead2
        self.payload = payload
        self.max_packet_size = payload + 8 + 8 * POINTERS_PER_PACKET
        ig = spead2.send.ItemGroup()
        ig.add_item(PAYLOAD_ID, "payload", "", shape=(HEAP_SIZE,), dtype=np.uint8)
        ig["payload"].value = np.arange(HEAP_SIZE, dtype=np.uint32).astype(np.uint8)
        self.heap = ig.get_heap(descriptors="none", data="all")
        self.heap.repeat_pointers = True
        self.end = ig.get_end()
        self.pool = spead2.ThreadPool(1)
        self.using_gso = None

    def send(self, port, rate, n_heaps):
        """Send `n_heaps` heaps (rate in bytes/s of packets, 0 = unlimited) and
        an end-of-stream heap; returns the achieved payload rate."""
        import spead2.send

        # burst_rate_ratio: see SENDER_BURST_RATE_RATIO.
        config = spead2.send.StreamConfig(max_packet_size=self.max_packet_size, rate=rate, max_heaps=64,
                                          burst_size=SENDER_BURST_SIZE,
                                          burst_rate_ratio=SENDER_BURST_RATE_RATIO)
        stream = spead2.send.UdpStream(self.pool, [("127.0.0.1", port)], config, buffer_size=4 * 1024 * 1024)
        self.using_gso = stream.using_gso
        heap = self.heap
        start = time.perf_counter()
        for cnt in range(1, n_heaps + 1):
            stream.send_heap(heap, cnt=cnt)
        stream.flush()
        elapsed = time.perf_counter() - start
        time.sleep(0.05)
        for _ in range(3):  # the end heap must not be lost behind a full socket buffer
            stream.send_heap(self.end, cnt=n_heaps + 1)
            time.sleep(0.05)
        return n_heaps * HEAP_SIZE / elapsed


def free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def packet_rate_to_wire(rate, payload):
    """Payload bytes/s → bytes/s of SPEAD packets (what StreamConfig.rate limits)."""
    return rate * (payload + 8 + 8 * POINTERS_PER_PACKET) / payload


def heaps_for(rate, seconds):
    return max(64, int(rate * seconds / HEAP_SIZE))


def measure_sender(workers, sender, payload, args, log):
    """The sender's unthrottled rate: one unthrottled run into each receiver (the
    receiver's kernel work runs on the sender's CPU on loopback, so it differs)."""
    runs = {}
    for w in workers:
        n = heaps_for(2e9, args.step_seconds)
        r = w.run(sender, free_port(), 0.0, n)
        runs[w.name] = r
        log(f"  {payload // 1024} KiB {w.name:4s} unthrottled: offered {r['offered_rate'] / 1e6:8.1f} MB/s, "
            f"received {r['heaps']}/{n} heaps")
    return runs


def ladder_rates(sender_rate, args):
    """The rungs (payload bytes/s): --rates, else fractions of the sender's unthrottled rate."""
    if args.rates:
        return [float(x) * 1e6 for x in args.rates.split(",")]
    return [max(MIN_RATE, f * sender_rate) for f in LADDER_FRACTIONS]


def search_lossless(workers, sender, payload, args, log):
    """A ladder of rates, each run --repeats times per implementation, interleaved.

    A rung passes for an implementation if every one of its runs received every
    heap; the lossless rate is the highest rung below the first one that failed
    (as the reference's spead2_bench counts a rate good only if all of its runs
    were).  Single runs decide nothing on a shared machine: a few milliseconds
    without CPU overflow any socket buffer at these rates, for either receiver.
    """
    unthrottled = measure_sender(workers, sender, payload, args, log)
    sender_rate = max(r["offered_rate"] for r in unthrottled.values())
    rungs = ladder_rates(sender_rate, args)
    results = {w.name: {"unthrottled": unthrottled[w.name], "rungs": []} for w in workers}
    for rate in rungs:
        n = heaps_for(rate, args.step_seconds)
        runs = {w.name: [] for w in workers}
        for rep in range(args.repeats):
            for w in (workers if rep % 2 == 0 else workers[::-1]):
                for attempt in range(1 + SHORTFALL_RETRIES):
                    r = w.run(sender, free_port(), packet_rate_to_wire(rate, payload), n)
                    if r["offered_rate"] >= SHORTFALL * rate:
                        break
                    log(f"  {payload // 1024} KiB {w.name:4s} {rate / 1e6:.0f} MB/s: the sender reached only "
                        f"{r['offered_rate'] / 1e6:.1f} MB/s; again")
                runs[w.name].append(r)
        for w in workers:
            rs = runs[w.name]
            rung = {"rate": rate, "runs": rs, "sent_heaps": n,
                    "lossless_runs": sum(1 for r in rs if r["lossless"]),
                    "lost_heaps": sum(n - min(n, r["heaps"]) for r in rs),
                    "sender_short": any(r["offered_rate"] < SHORTFALL * rate for r in rs)}
            results[w.name]["rungs"].append(rung)
            log(f"  {payload // 1024} KiB {w.name:4s} {rate / 1e6:8.1f} MB/s: {rung['lossless_runs']}/{len(rs)} runs "
                f"lossless, {rung['lost_heaps']} of {n * len(rs)} heaps lost")
    for w in workers:
        res = results[w.name]
        res["lossless_rate"] = 0.0
        res["first_loss"] = None
        for rung in res["rungs"]:
            if rung["lossless_runs"] < len(rung["runs"]) or rung["sender_short"]:
                res["first_loss"] = rung["rate"]
                break
            res["lossless_rate"] = rung["rate"]
        # The same with most (more than half) of the runs lossless: less
        # sensitive to one stall of the machine.
        res["mostly_lossless_rate"] = 0.0
        for rung in res["rungs"]:
            if 2 * rung["lossless_runs"] <= len(rung["runs"]) or rung["sender_short"]:
                break
            res["mostly_lossless_rate"] = rung["rate"]
        # Every rung passed and so did the unthrottled run: the sender is the limit.
        res["limited_by_sender"] = res["first_loss"] is None and unthrottled[w.name]["lossless"]
    return results


def measure_cpu(workers, sender, payload, rate, args, log):
    runs = {w.name: [] for w in workers}
    n = heaps_for(rate, args.cpu_seconds)
    for round_ in range(args.rounds):
        order = workers if round_ % 2 == 0 else workers[::-1]
        for w in order:
            r = w.run(sender, free_port(), packet_rate_to_wire(rate, payload), n)
            r["cpu_per_packet"] = (r["user"] + r["system"]) / max(1, r["packets"])
            runs[w.name].append(r)
            log(f"  {payload // 1024} KiB {w.name:4s} cpu round {round_ + 1}: {r['packets']} packets, "
                f"{r['heaps']}/{n} heaps, user {r['user']:.3f} s, sys {r['system']:.3f} s, "
                f"{r['cpu_per_packet'] * 1e9:.0f} ns/packet")
    return runs


def median(values):
    return statistics.median(values) if values else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--heap-size", type=int, default=HEAP_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the sender and the receiver to different CPUs")
    parser.add_argument("--ref-python", default=DEFAULT_REF_PYTHON,
                        help="interpreter with the reference spead2 [the virtualenv of spead2.tools.reference]")
    parser.add_argument("--payloads", default="1k,8k", help="payload sizes per packet: 1k, 8k [%(default)s]")
    parser.add_argument("--repeats", type=int, default=4,
                        help="runs per rung of the rate ladder per implementation [%(default)s]")
    parser.add_argument("--rates", default=None, metavar="MB/s,...",
                        help="rungs of the rate ladder [0.2-0.9 of the sender's unthrottled rate]")
    parser.add_argument("--step-seconds", type=float, default=0.5, help="traffic per run of the ladder [%(default)s s]")
    parser.add_argument("--cpu-seconds", type=float, default=1.0, help="traffic per CPU run [%(default)s s]")
    parser.add_argument("--rounds", type=int, default=3, help="CPU runs per implementation [%(default)s]")
    parser.add_argument("--cpu-rate", type=float, default=None, metavar="MB/s",
                        help="offered load for the CPU measurement [half the lower lossless rate]")
    parser.add_argument("--force-buffer", action="store_true",
                        help=f"give both receivers a {RECV_BUFFER // 2**20} MiB socket buffer with SO_RCVBUFFORCE "
                             "(root), whatever net.core.rmem_max says")
    parser.add_argument("--json", metavar="FILE", help="write every run and the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    args = parser.parse_args(argv)
    if args.ref_python is None and not getattr(args, "worker", False):
        from spead2.tools import reference

        args.ref_python = reference.ensure(progress=lambda m: print(f"# {m}", file=sys.stderr))
    if args.worker:
        worker_main(args)
        return 0
    if not 1 <= args.repeats <= 10 or not 0.1 <= args.step_seconds <= 5 or not 0.1 <= args.cpu_seconds <= 5:
        parser.error("keep the load bounded: 1-10 repeats, 0.1-5 s per run")
    if args.rates and len(args.rates.split(",")) > 12:
        parser.error("keep the load bounded: at most 12 rungs")
    payloads = []
    for name in args.payloads.split(","):
        if name not in PAYLOADS:
            parser.error(f"unknown payload size {name!r} (choose from {', '.join(PAYLOADS)})")
        payloads.append(PAYLOADS[name])

    def log(text):
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    # Sender (this process) and receiver on different CPUs where there are
    # at least two: less noise from the scheduler.  Threads inherit this.
    sender_cpus = receiver_cpus = None
    available = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(available) >= 2:
        sender_cpus = available[:len(available) // 2]
        receiver_cpus = available[len(available) // 2:]
        os.sched_setaffinity(0, sender_cpus)

    import spead2

    started = time.monotonic()
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "rmem_max": _read_sysctl("net/core/rmem_max"),
                          "force_buffer": RECV_BUFFER if args.force_buffer else None,
                          "sender_cpus": sender_cpus, "receiver_cpus": receiver_cpus},
              "heap_size": HEAP_SIZE, "payloads": {}}
    report["machine"]["wakeups"] = probe_wakeups(receiver_cpus)
    log("receiver CPU wake-ups from 100 us sleeps in {seconds:.0f} s: {over_1ms} late by > 1 ms, "
        "{over_2ms} by > 2 ms, at most {max_ms:.1f} ms".format(**report["machine"]["wakeups"]))
    for payload in payloads:
        log(f"payload {payload} bytes per packet, heaps of {HEAP_SIZE} bytes")
        sender = Sender(payload)
        force = RECV_BUFFER if args.force_buffer else 0
        workers = [Worker("ours", sys.executable, HEAP_SIZE, receiver_cpus, force),
                   Worker("ref", args.ref_python, HEAP_SIZE, receiver_cpus, force)]
        try:
            report["versions"] = {"ours": workers[0].version, "ref": workers[1].version,
                                  "sender": spead2.__version__}
            search = search_lossless(workers, sender, payload, args, log)
            if args.cpu_rate is not None:
                cpu_rate = args.cpu_rate * 1e6
            else:
                # Half the lower lossless rate (half the lowest rung if a receiver lost even there).
                lowest = search[workers[0].name]["rungs"][0]["rate"]
                cpu_rate = 0.5 * min(search[w.name]["lossless_rate"] or lowest for w in workers)
            cpu = measure_cpu(workers, sender, payload, cpu_rate, args, log)
        finally:
            for w in workers:
                w.close()
        report["payloads"][str(payload)] = {
            "using_gso": sender.using_gso, "search": search, "cpu_rate": cpu_rate, "cpu": cpu}
    report["elapsed"] = time.monotonic() - started
    print_tables(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def probe_wakeups(cpus, seconds=3.0):
    """How late a thread on the receiver's CPU wakes from 100 us sleeps (a
    subprocess, pinned like the receiver): the machine's own stalls, which
    no receiver can do anything about but buffer."""
    code = (
        "import os, time, json, sys\n"
        "cpus = json.loads(sys.argv[1])\n"
        "if cpus: os.sched_setaffinity(0, cpus)\n"
        "late = []; end = time.monotonic() + float(sys.argv[2]); n = 0\n"
        "while time.monotonic() < end:\n"
        "    t = time.monotonic(); time.sleep(1e-4); late.append(time.monotonic() - t - 1e-4); n += 1\n"
        "print(json.dumps({'sleeps': n, 'over_1ms': sum(x > 1e-3 for x in late),\n"
        "                  'over_2ms': sum(x > 2e-3 for x in late), 'max_ms': max(late) * 1e3}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cpus), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    result["seconds"] = seconds
    return result


def _read_sysctl(name):
    try:
        with open(f"/proc/sys/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def print_tables(report):
    versions = report.get("versions", {})
    print(f"UDP receive on loopback, heaps of {report['heap_size'] // 1024} KiB, sender: ours (GSO), "
          f"ours {versions.get('ours')} vs reference {versions.get('ref')}, "
          f"net.core.rmem_max = {report['machine']['rmem_max']}"
          + (f", socket buffers forced to {report['machine']['force_buffer']}"
             if report["machine"].get("force_buffer") else ""))
    print()
    print("(a) receiver CPU time per packet at the same offered load (medians over the rounds; 'paired':")
    print("    median of the per-round ratios, ours and the reference having run back to back)")
    print(f"{'payload':>8} {'load MB/s':>10} {'ours ns/pkt':>12} {'ref ns/pkt':>11} {'ours/ref':>9} "
          f"{'paired':>7} {'ours loss':>10} {'ref loss':>9}")
    summary = {}
    for payload, p in report["payloads"].items():
        cpu = p["cpu"]
        ours = median([r["cpu_per_packet"] for r in cpu["ours"]])
        ref = median([r["cpu_per_packet"] for r in cpu["ref"]])
        loss = {k: sum(r["sent_heaps"] - r["heaps"] for r in v) / max(1, sum(r["sent_heaps"] for r in v))
                for k, v in cpu.items()}
        ratio = ours / ref if ref else float("nan")
        paired = median([a["cpu_per_packet"] / b["cpu_per_packet"] for a, b in zip(cpu["ours"], cpu["ref"])])
        summary.setdefault(payload, {})["cpu_ratio"] = ratio
        summary[payload]["cpu_ratio_paired"] = paired
        print(f"{int(payload) // 1024:>6} K {p['cpu_rate'] / 1e6:>10.0f} {ours * 1e9:>12.0f} {ref * 1e9:>11.0f} "
              f"{ratio:>9.3f} {paired:>7.3f} {loss['ours'] * 100:>9.2f}% {loss['ref'] * 100:>8.2f}%")
    print()
    print("(b) lossless runs per rung of the rate ladder (ours | ref), heaps lost in brackets; '*': the")
    print("    sender fell short of the rung's rate (on loopback the receiving socket's kernel work runs on")
    print("    the sender's CPU), so the rung counts as failed")
    for payload, p in report["payloads"].items():
        s = p["search"]
        cells = []
        for a, b in zip(s["ours"]["rungs"], s["ref"]["rungs"]):
            cells.append(f"{a['rate'] / 1e6:.0f}: {a['lossless_runs']}/{len(a['runs'])} ({a['lost_heaps']})"
                         f"{'*' if a['sender_short'] else ''}"
                         f" | {b['lossless_runs']}/{len(b['runs'])} ({b['lost_heaps']})"
                         f"{'*' if b['sender_short'] else ''}")
        u = {k: s[k]["unthrottled"] for k in ("ours", "ref")}
        cells.append("unthrottled: " + " | ".join(
            f"{u[k]['offered_rate'] / 1e6:.0f} {'ok' if u[k]['lossless'] else 'LOSS'}" for k in ("ours", "ref")))
        print(f"{int(payload) // 1024:>6} K  " + "\n          ".join(cells))
    print()
    print("    highest rung below the first that failed (MB/s of heap payload): 'all' = every run")
    print("    of each rung up to it lossless, 'most' = more than half of them")
    print(f"{'payload':>8} {'all: ours':>10} {'ref':>10} {'ours/ref':>9} {'most: ours':>11} {'ref':>10} {'ours/ref':>9}")
    for payload, p in report["payloads"].items():
        s = p["search"]
        row = []
        for key, name in (("lossless_rate", "rate_ratio"), ("mostly_lossless_rate", "mostly_rate_ratio")):
            ours, ref = s["ours"][key], s["ref"][key]
            lowest = s["ours"]["rungs"][0]["rate"] / 1e6
            texts = [f"{r / 1e6:.0f}" if r else f"<{lowest:.0f}" for r in (ours, ref)]
            ratio = ours / ref if ref else float("inf")
            summary[payload][name] = ratio
            row += texts + [f"{ratio:.2f}" if ref else ("n/a" if not ours else ">1")]
        print(f"{int(payload) // 1024:>6} K {row[0]:>10} {row[1]:>10} {row[2]:>9} {row[3]:>11} {row[4]:>10} {row[5]:>9}")
    print("    unthrottled (the sender's own limit): "
          + "; ".join(f"{int(payload) // 1024} K ours {p['search']['ours']['unthrottled']['offered_rate'] / 1e6:.0f} "
                      f"{'lossless' if p['search']['ours']['unthrottled']['lossless'] else 'LOSS'}, ref "
                      f"{p['search']['ref']['unthrottled']['offered_rate'] / 1e6:.0f} "
                      f"{'lossless' if p['search']['ref']['unthrottled']['lossless'] else 'LOSS'}"
                      for payload, p in report["payloads"].items()))
    print()
    wk = report["machine"].get("wakeups")
    if wk:
        print(f"    the machine: of {wk['sleeps']} wake-ups on the receiver's CPU (100 us sleeps, "
              f"{wk['seconds']:.0f} s) {wk['over_1ms']} came > 1 ms late, {wk['over_2ms']} > 2 ms "
              f"(at most {wk['max_ms']:.1f} ms);")
        print("    a stall of 2 ms at 4 GB/s is 8 MB, more than the socket buffer")
    print()
    print(f"total time {report['elapsed']:.0f} s")
    report["summary"] = summary


if __name__ == "__main__":
    sys.exit(main())
