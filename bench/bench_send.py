#!/usr/bin/env python3
"""Sender throughput benchmark: packets/s over loopback UDP, this spead2 versus
the reference spead2, in one run.

Two modes live in this one file:

driver (default)
    For each case runs the worker under this interpreter (``sys.executable``,
    i.e. the ``spead2`` installed from this repository) and under the
    reference interpreter (``--ref-python``), alternating ours, ref, ours,
    ref, ... for ``--rounds`` rounds, and prints a table of packets/s with the
    ratios (and ``--json FILE``).

worker (``--worker``)
    Imports whichever ``spead2`` its interpreter provides, binds a UDP socket
    on 127.0.0.1 that it never reads (so the kernel drops what does not fit,
    and loopback sends draw no ICMP errors), builds one heap and sends it over
    a ``spead2.send.UdpStream`` again and again for ``--duration`` seconds,
    after a short untimed warm-up.  Prints a JSON object as the last line of
    stdout.

Only the sender is measured: the receiving side costs both packages the same.
See bench/README.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------------------
# Cases (shared by driver and worker)

#: SPEAD-64-48 heaps with one immediate (a timestamp) and one payload item.
HEAP_ADDRESS_BITS = 48
#: Header and item pointers of the first packet: 8 + 8 × (4 specials + timestamp + payload).
FIRST_PACKET_OVERHEAD = 8 + 8 * 6

CASES = {
    "1k": dict(payload=1024, max_packet=1472, desc="1 KiB payload, one packet per heap"),
    "8k": dict(payload=8192, max_packet=8192 + FIRST_PACKET_OVERHEAD, desc="8 KiB payload, one packet per heap"),
    "64k": dict(payload=65536, max_packet=1472, desc="64 KiB heaps in 1472-byte packets"),
}

#: Ways of driving the stream.  "sync": ``stream.send_heap(heap)`` in a Python
#: loop (both packages).  "batch": ``send_heaps`` with ``--batch`` references
#: to the heap per call (both packages).
#: "sync-nogso": "sync" with ``allow_gso=False`` (ours only).
#: "rate": "sync" with ``StreamConfig(rate=--rate-gbps)`` and the default
#: burst settings: reports how close the achieved rate is to the requested one.
MODES = ("sync", "sync-nogso", "batch", "rate")


# ---------------------------------------------------------------------------
# Worker


def count_packets(data, bits=HEAP_ADDRESS_BITS):
    """Packets in a concatenation of SPEAD packets."""
    pos = packets = 0
    mask = (1 << bits) - 1
    while pos < len(data):
        n_items = int.from_bytes(data[pos + 6:pos + 8], "big")
        length = 0
        for k in range(n_items):
            start = pos + 8 + 8 * k
            pointer = int.from_bytes(data[start:start + 8], "big")
            if (pointer >> bits) & ((1 << (63 - bits)) - 1) == 4:  # PAYLOAD_LENGTH
                length = pointer & mask
        pos += 8 + 8 * n_items + length
        packets += 1
    return packets


def worker(args):
    import socket

    import numpy as np

    import spead2
    import spead2.send

    case = CASES[args.case]
    flavour = spead2.Flavour(4, 64, HEAP_ADDRESS_BITS, 0)
    ig = spead2.send.ItemGroup(flavour=flavour)
    ig.add_item(0x1600, "timestamp", "", shape=(), format=[("u", HEAP_ADDRESS_BITS)], value=12345)
    ig.add_item(0x3300, "data", "", shape=(case["payload"],), dtype=np.uint8,
                value=(np.arange(case["payload"]) % 256).astype(np.uint8))
    heap = ig.get_heap(descriptors="none", data="all")
    thread_pool = spead2.ThreadPool()
    # send_heaps needs room for the whole batch in the stream's heap queue.
    max_heaps = max(args.batch, 4) if args.mode == "batch" else 4
    rate = args.rate_gbps * 1e9 / 8 if args.mode == "rate" else 0.0
    config = spead2.send.StreamConfig(max_packet_size=case["max_packet"], max_heaps=max_heaps, rate=rate)

    probe = spead2.send.BytesStream(thread_pool, config)
    probe.send_heap(heap)
    sample = probe.getvalue()
    packets_per_heap = count_packets(sample)
    bytes_per_heap = len(sample)

    if args.transport == "bytes":
        # A BytesStream keeps everything it was given: a fresh one per call
        # of send_some (64 heaps or one batch) bounds the memory.
        class Fresh:
            def __getattr__(self, name):
                return getattr(spead2.send.BytesStream(thread_pool, config), name)

        stream = Fresh()
    else:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        if args.mode == "sync-nogso":
            stream = spead2.send.UdpStream(thread_pool, [rx.getsockname()], config, allow_gso=False)
        else:
            stream = spead2.send.UdpStream(thread_pool, [rx.getsockname()], config)

    if args.mode in ("sync", "sync-nogso", "rate"):
        def send_some():
            send_heap = stream.send_heap  # one stream per call (see Fresh)
            for _ in range(64):
                send_heap(heap)
            return 64
    else:
        if not hasattr(stream, "send_heaps"):
            print(json.dumps({"error": "this spead2 has no send_heaps"}))
            return 3
        refs = [spead2.send.HeapReference(heap) for _ in range(args.batch)]
        mode = spead2.send.GroupMode.ROUND_ROBIN

        def send_some():
            stream.send_heaps(refs, mode)
            return len(refs)

        refs = spead2.send.HeapReferenceList(refs)

    deadline = time.perf_counter() + args.warmup
    while time.perf_counter() < deadline:
        send_some()
    heaps = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + args.duration
    while True:
        heaps += send_some()
        now = time.perf_counter()
        if now >= deadline:
            break
    elapsed = now - start
    cpu = time.process_time() - cpu_start
    result = {
        "case": args.case,
        "mode": args.mode,
        "heaps": heaps,
        "packets": heaps * packets_per_heap,
        "bytes": heaps * bytes_per_heap,
        "packets_per_heap": packets_per_heap,
        "seconds": elapsed,
        "pps": heaps * packets_per_heap / elapsed,
        "cpu_seconds": cpu,
        "pps_per_core": heaps * packets_per_heap / cpu if cpu > 0 else float("nan"),
        "transport": args.transport,
        "gbps": heaps * bytes_per_heap * 8 / elapsed / 1e9,
        "using_gso": getattr(stream, "using_gso", None),
        "requested_gbps": rate * 8 / 1e9,
        "rate_error": (heaps * bytes_per_heap / elapsed) / rate - 1 if rate else None,
        "spead2_file": spead2.__file__,
        "spead2_version": getattr(spead2, "__version__", "?"),
    }
    del stream
    del thread_pool
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------
# Driver


def run_worker(python, case, mode, args):
    cmd = [python, os.path.abspath(__file__), "--worker", "--case", case, "--mode", mode,
           "--duration", str(args.duration), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--rate-gbps", str(args.rate_gbps), "--transport", args.transport]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_PRELOAD")}
    if python == sys.executable and "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # ours may be a build tree, never the reference
    env["OPENBLAS_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env,
                          timeout=args.duration + args.warmup + 120)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run one measurement (internal)")
    parser.add_argument("--case", choices=sorted(CASES), help="(worker) case to run")
    parser.add_argument("--mode", choices=MODES, default="sync", help="(worker) how to drive the stream")
    parser.add_argument("--transport", choices=("udp", "bytes"), default="udp",
                        help="udp: UdpStream to a loopback socket nobody reads; bytes: BytesStream [%(default)s]")
    parser.add_argument("--cases", default="1k,8k,64k", help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--ref-python", default=None,
                        help="interpreter with the reference spead2 [the virtualenv of spead2.tools.reference, "
                             "made on first use]")
    parser.add_argument("--ref-modes", default="sync,batch",
                        help="how to drive the reference: sync and/or batch [%(default)s]")
    parser.add_argument("--ours-no-gso", action="store_true",
                        help="also run ours with allow_gso=False (row suffix -nogso)")
    parser.add_argument("--rounds", type=int, default=3, help="ours/ref alternations per case [%(default)s]")
    parser.add_argument("--duration", type=float, default=1.5, help="timed seconds per run [%(default)s]")
    parser.add_argument("--warmup", type=float, default=0.2, help="untimed seconds per run [%(default)s]")
    parser.add_argument("--batch", type=int, default=64, help="heaps per send_heaps call (batch mode)")
    parser.add_argument("--json", help="write every run and the summary to this file")
    parser.add_argument("--rate-gbps", type=float, default=1.0, help="(rate mode) requested rate [%(default)s]")
    parser.add_argument("--accuracy", metavar="GBPS,...",
                        help="instead of throughput: pacing accuracy of both packages at these rates "
                             "(default burst settings), one row per case and rate")
    args = parser.parse_args()
    if args.ref_python is None and not args.worker:
        from spead2.tools import reference

        args.ref_python = reference.ensure(progress=lambda m: print(f"# {m}", file=sys.stderr))

    if args.worker:
        return worker(args)
    if args.accuracy:
        return accuracy(args)

    cases = [c for c in args.cases.split(",") if c]
    ref_modes = [m for m in args.ref_modes.split(",") if m]
    for c in cases:
        if c not in CASES:
            parser.error(f"unknown case {c!r}")
    for m in ref_modes:
        if m not in ("sync", "batch"):
            parser.error(f"unknown reference mode {m!r}")
    ours_modes = ref_modes + (["sync-nogso"] if args.ours_no_gso else [])
    sides = [("ours", sys.executable, m) for m in ours_modes] + [("ref", args.ref_python, m) for m in ref_modes]
    runs = {(c, side, mode): [] for c in cases for side, _, mode in sides}
    files = {}
    for case in cases:
        for rnd in range(args.rounds):
            for side, python, mode in sides:
                result = run_worker(python, case, mode, args)
                runs[(case, side, mode)].append(result)
                files[side] = result["spead2_file"]
                print(f"  {case:>4} round {rnd + 1}: {side:4} {mode:10} {result['pps'] / 1e3:9.1f} kpkt/s "
                      f"{result['pps_per_core'] / 1e3:9.1f} kpkt/CPU-s {result['gbps']:6.2f} Gb/s",
                      file=sys.stderr, flush=True)
    if files.get("ours") == files.get("ref"):
        raise RuntimeError(f"both sides imported the same spead2 ({files['ours']})")

    # Per case and mode: best and median packets/s (wall clock) and packets
    # per CPU-second of the sending process ("per core"), ours / reference.
    summary = []
    header = (f"{'case':<9} {'mode':<10} {'ours pkt/s':>11} {'ref pkt/s':>11} {'ratio':>6} {'(med)':>6} "
              f"{'ours pkt/CPU-s':>15} {'ref pkt/CPU-s':>14} {'ratio':>6} {'(med)':>6} {'spread':>7}")
    lines = [f"transport: {args.transport}", header, "-" * len(header)]
    for case in cases:
        for mode in ours_modes:
            ref_mode = "sync" if mode == "sync-nogso" else mode
            ours = runs[(case, "ours", mode)]
            ref = runs[(case, "ref", ref_mode)]
            row = {"case": case, "mode": mode, "desc": CASES[case]["desc"],
                   "packets_per_heap": ours[0]["packets_per_heap"]}
            for key in ("pps", "pps_per_core"):
                o = [r[key] for r in ours]
                f = [r[key] for r in ref]
                row[f"ours_{key}_best"], row[f"ref_{key}_best"] = max(o), max(f)
                row[f"ratio_{key}"] = max(o) / max(f)
                row[f"ratio_{key}_median"] = statistics.median(o) / statistics.median(f)
                # Spread of the per-round ratios (round i of ours / round i of the reference).
                paired = [a / b for a, b in zip(o, f)]
                row[f"ratio_{key}_rounds"] = paired
            summary.append(row)
            spread = row["ratio_pps_per_core_rounds"]
            lines.append(
                f"{case:<9} {mode:<10} {row['ours_pps_best']:11.0f} {row['ref_pps_best']:11.0f} "
                f"{row['ratio_pps']:6.2f} {row['ratio_pps_median']:6.2f} "
                f"{row['ours_pps_per_core_best']:15.0f} {row['ref_pps_per_core_best']:14.0f} "
                f"{row['ratio_pps_per_core']:6.2f} {row['ratio_pps_per_core_median']:6.2f} "
                f"{min(spread):.2f}-{max(spread):.2f}"
            )
    print("\n".join(lines))
    print(f"\nours: {files.get('ours')}\nref:  {files.get('ref')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "runs": {"|".join(k): v for k, v in runs.items()},
                       "args": vars(args)}, f, indent=1)
    return 0


def accuracy(args):
    """Achieved / requested rate for each case and rate, ours and the reference alternating."""
    cases = [c for c in args.cases.split(",") if c]
    print(f"{'case':<6} {'asked Gb/s':>10} {'ours Gb/s':>10} {'ours err':>9} {'ref Gb/s':>10} {'ref err':>9}")
    for case in cases:
        for gbps in [float(x) for x in args.accuracy.split(",") if x]:
            args.rate_gbps = gbps
            row = {}
            for side, python in (("ours", sys.executable), ("ref", args.ref_python)):
                row[side] = run_worker(python, case, "rate", args)
            print(f"{case:<6} {gbps:10.2f} {row['ours']['gbps']:10.3f} {row['ours']['rate_error']:+9.2%} "
                  f"{row['ref']['gbps']:10.3f} {row['ref']['rate_error']:+9.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
