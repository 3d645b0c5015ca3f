#!/usr/bin/env python3
"""Where the per-packet cost of a chunk stream group comes from: ours and the reference.

Usage::

    python3 bench/bench_group.py [--streams 2] [--heap-size 65536 --packet-size 1472] [options]

``spead2_bench --streams plain,2`` compares a group of N members (heap i to
member i mod N) with one plain ``ChunkRingStream`` on the same traffic.  That
ratio mixes three things; this script separates them by measuring, in one
worker process, the CPU time per packet of the receiving threads for

``plain``
    one ChunkRingStream, all the heaps;
``plain-share``
    one ChunkRingStream fed only member 0's share (heaps i with i mod N = 0):
    the traffic one member sees, without any group;
``group1-share``
    a group of one member fed that same share;
``groupN``
    the group of N members, each fed its share, on its own pinned thread.

so that ``plain-share / plain`` is the cost of the sparser traffic each
member sees (the same per-chunk work spread over 1/N of the packets, writes
to every N-th heap slot), ``group1-share / plain-share`` the group machinery
for one member, and ``groupN / plain-share`` what N members running together
add (waiting for one another in LOSSLESS mode, cores contending for memory).
``groupN / plain`` is the number ``spead2_bench`` reports.

Each worker runs every configuration once to warm up, then ``--reps`` times,
interleaved, and reports the median; ours and the reference (``--ref-python``, by default the
virtualenv ``spead2_bench --compare-reference`` uses, created on demand) take
turns for ``--rounds`` rounds.  The traffic, the place callback and the
receiver are those of ``spead2_bench`` (``spead2.tools.bench``), loaded by
path, so the reference's interpreter runs the same code.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import bench_tool

CONFIGS = ("plain", "plain-share", "group1-share", "groupN")
#: (name, numerator, denominator) of the ratios in the table.
RATIOS = (
    ("share/plain", "plain-share", "plain"),
    ("group1/share", "group1-share", "plain-share"),
    ("groupN/share", "groupN", "plain-share"),
    ("groupN/plain", "groupN", "plain"),
)


# ---------------------------------------------------------------------------
# Worker


def worker_main(args):
    traffic = bench_tool.load("traffic", args.bench_module)
    worker = bench_tool.load("worker", args.bench_module)
    import numpy as np
    import spead2

    t = traffic.Traffic(args.heap_size, args.packet_size, args.heaps, 48, args.channels)
    n = args.streams
    w = worker.Worker()
    cpus = sorted(os.sched_getaffinity(0)) if args.pin else []
    if args.source == "mem":
        whole = w.buffer_sources(t, args.raw, None)
        parts = w.buffer_sources(t, args.raw, n)
    else:
        whole = [args.pcap]
        parts = args.parts
    share = [parts[0]]
    share_heaps = traffic.member_share(t.heaps, n, 0)
    configs = {
        "plain": (None, whole, t.heaps),
        "plain-share": (None, share, share_heaps),
        "group1-share": (1, share, share_heaps),
        "groupN": (n, parts, t.heaps),
    }
    results = {name: [] for name in CONFIGS}
    for rep in range(args.reps + 1):  # the first pass warms up and is not kept
        for name in CONFIGS:
            streams, sources, heaps = configs[name]
            rx = worker.Receiver(w, t, streams=streams, lossless=True, cpus=cpus)
            c0 = rx.cpu()
            start = time.perf_counter()
            for stream, source in zip(rx.streams, sources):
                if args.source == "mem":
                    stream.add_buffer_reader(source)
                else:
                    stream.add_udp_pcap_file_reader(source)
            rx.consume()
            seconds = time.perf_counter() - start
            c1 = rx.cpu()
            stats = rx.stop()
            r = rx.result(seconds, worker._cpu_diff(c0, c1), stats, heaps_sent=heaps,
                          packets_sent=heaps * t.packets_per_heap)
            if r["error"] or r["heaps_complete"] != heaps:
                raise SystemExit(f"{name}: {r['heaps_complete']} of {heaps} heaps complete, {r['error']}")
            if rep == 0:
                continue
            results[name].append({
                "seconds": seconds,
                "packets": r["packets_received"],
                "rx_ns_per_packet": r["receiver_cpu_s_per_mpkt"] * 1e3,
                "process_ns_per_packet": r["cpu_s_per_mpkt"] * 1e3,
                "switches": r["receiver_context_switches"],
            })
            del rx
    out = {"version": spead2.__version__, "file": spead2.__file__, "configs": {}}
    for name, runs in results.items():
        out["configs"][name] = {
            "rx_ns_per_packet": statistics.median(x["rx_ns_per_packet"] for x in runs),
            "process_ns_per_packet": statistics.median(x["process_ns_per_packet"] for x in runs),
            "packets_per_s": statistics.median(x["packets"] / x["seconds"] for x in runs),
            "runs": runs,
        }
    print("@@result " + json.dumps(out))
    return 0


# ---------------------------------------------------------------------------
# Driver


def spread(values):
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1]}


def fmt(s):
    return f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


def run_worker(python, env, cwd, argv):
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker", *argv], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600, stdin=subprocess.DEVNULL)
    for line in proc.stdout.splitlines():
        if line.startswith("@@result "):
            return json.loads(line[len("@@result "):])
    raise SystemExit(f"worker {python} failed (status {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                     f"{proc.stderr[-2000:]}")


def driver_main(args):
    from spead2.tools.bench import context, run, traffic

    bench_module = os.path.dirname(os.path.abspath(traffic.__file__))
    ref_python = args.ref_python
    if ref_python is None:
        ref_python = context.reference_python(os.environ.get("SPEAD2_BENCH_REF_VENV") or None,
                                            lambda text: print("#", text, file=sys.stderr))
    impls = [("ours", sys.executable, context.ours_env()), ("reference", ref_python, context.clean_ref_env())]
    t = traffic.Traffic(args.heap_size, args.packet_size, args.heaps, 48, args.channels)
    t.check()
    tmp = tempfile.mkdtemp(prefix="spead2-bench-group-", dir=args.tmpdir)
    report = {"config": vars(args), "traffic": t.as_dict(), "machine": run.machine_info(), "results": []}
    try:
        files = traffic.generate(t, tmp)
        parts = traffic.split_pcap(t, files["pcap"], args.streams) if "pcap" in args.sources else []
        for source in args.sources:
            argv = ["--source", source, "--bench-module", bench_module, "--raw", files["raw"],
                    "--pcap", files["pcap"], "--heap-size", str(t.heap_size),
                    "--packet-size", str(t.packet_size), "--heaps", str(t.heaps),
                    "--channels", str(t.channels), "--streams", str(args.streams), "--reps", str(args.reps),
                    "--pin", "on" if args.pin else "off"]
            for p in parts:
                argv += ["--part", p]
            rounds = {name: [] for name, _, _ in impls}
            for rnd in range(args.rounds):
                for name, python, env in impls:
                    r = run_worker(python, env, tmp, argv)
                    rounds[name].append(r)
                    c = r["configs"]
                    print(f"# {source} round {rnd} {name}: rx ns/pkt "
                          + ", ".join(f"{k} {c[k]['rx_ns_per_packet']:.0f}" for k in CONFIGS), file=sys.stderr)
            if rounds["ours"][0]["file"] == rounds["reference"][0]["file"]:
                raise SystemExit("ours and the reference imported the same spead2")
            entry = {"source": source, "streams": args.streams}
            for name, _, _ in impls:
                rs = rounds[name]
                entry[name] = {
                    "version": rs[0]["version"],
                    "rx_ns_per_packet": {k: spread([r["configs"][k]["rx_ns_per_packet"] for r in rs])
                                         for k in CONFIGS},
                    "ratios": {label: spread([r["configs"][a]["rx_ns_per_packet"] / r["configs"][b]["rx_ns_per_packet"]
                                              for r in rs])
                               for label, a, b in RATIOS},
                    "rounds": rs,
                }
            entry["ours_vs_reference"] = {
                k: spread([o["configs"][k]["rx_ns_per_packet"] / f["configs"][k]["rx_ns_per_packet"]
                           for o, f in zip(rounds["ours"], rounds["reference"])])
                for k in CONFIGS}
            report["results"].append(entry)
    finally:
        if not args.keep_traffic:
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)

    n = args.streams
    print(f"bench_group: {t.heap_size}-byte heaps in {t.packets_per_heap} packet(s) of at most {t.packet_size} "
          f"bytes, {t.heaps} heaps, N = {n} members, {args.rounds} rounds x {args.reps} reps, "
          f"{report['machine']['description']}")
    print("CPU time of the receiving threads per packet (ns), median of the rounds (lowest-highest); "
          f"groupN = group of {n}")
    for e in report["results"]:
        for name, _, _ in impls:
            x = e[name]
            print(f"  {e['source']:4} {name:9} " + "  ".join(f"{k} {fmt(x['rx_ns_per_packet'][k])}" for k in CONFIGS))
    print("ratios (per round, within one worker)")
    for e in report["results"]:
        for name, _, _ in impls:
            x = e[name]
            print(f"  {e['source']:4} {name:9} " + "  ".join(f"{label} {fmt(x['ratios'][label])}"
                                                             for label, _, _ in RATIOS))
        print(f"  {e['source']:4} ours/ref  " + "  ".join(f"{k} {fmt(e['ours_vs_reference'][k])}" for k in CONFIGS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=2, help="members of the group (N) [2]")
    p.add_argument("--heap-size", type=int, default=65536, help="payload bytes per heap [65536]")
    p.add_argument("--packet-size", type=int, default=1472, help="largest packet [1472]")
    p.add_argument("--heaps", type=int, default=8192, help="heaps per run [8192]")
    p.add_argument("--channels", type=int, default=4, help="heaps per timestamp [4]")
    p.add_argument("--sources", type=lambda s: s.split(","), default=["mem", "pcap"],
                   help="mem and/or pcap [mem,pcap]")
    p.add_argument("--rounds", type=int, default=5, help="ours/reference alternations [5]")
    p.add_argument("--reps", type=int, default=3, help="runs of each configuration per worker [3]")
    p.add_argument("--pin", type=lambda s: s != "off", default=True,
                   help="on: stream i's thread on the i-th allowed CPU, cyclically; off [on]")
    p.add_argument("--ref-python", help="interpreter with the reference spead2 [spead2_bench's virtualenv]")
    p.add_argument("--json", help="write everything (every run) to this file")
    p.add_argument("--tmpdir", help="where the traffic goes")
    p.add_argument("--keep-traffic", action="store_true")
    # worker
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--bench-module", help=argparse.SUPPRESS)
    p.add_argument("--raw", help=argparse.SUPPRESS)
    p.add_argument("--pcap", help=argparse.SUPPRESS)
    p.add_argument("--part", dest="parts", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.streams < 2:
        p.error("--streams must be at least 2 (a share of the traffic needs several members)")
    if args.rounds < 1 or args.reps < 1:
        p.error("--rounds and --reps must be positive")
    if not set(args.sources) <= {"mem", "pcap"}:
        p.error("--sources: mem and/or pcap")
    if args.worker:
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
