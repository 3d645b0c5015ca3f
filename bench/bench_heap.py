#!/usr/bin/env python3
"""Heap-at-a-time receive throughput: this spead2 versus the reference spead2.

Same method as bench_chunk.py (see bench/README.md): the driver generates
the traffic once, then runs a worker under this interpreter (``ours``) and
under ``--ref-python`` (``ref``), alternating ours, ref, ours, ref, ... for
``--rounds`` rounds, and prints heaps/s and the ratio ours/ref.

The worker builds a ``spead2.recv.Stream`` (optionally with a
``spead2.MemoryPool`` as ``StreamConfig.memory_allocator``), feeds it the
traffic from memory (``add_buffer_reader``) or a pcap file
(``add_udp_pcap_file_reader``) and takes every heap from Python with the
stream's iterator, reading ``heap.cnt``: the cost measured is assembling
heaps and handing them to Python, not decoding their items.  A first
(untimed) run checks every heap's payload and items.

Traffic: SPEAD-64-48 heaps carrying a timestamp and a channel (immediates)
and one addressed item (the payload, at address 0, announced in the first
packet of the heap); 1 KiB heaps (one packet each) and 64 KiB heaps (in
packets of at most 1472 bytes).
"""

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chunk import pcap_global_header, pcap_record  # noqa: E402

HEAP_CNT_ID, HEAP_LENGTH_ID, PAYLOAD_OFFSET_ID, PAYLOAD_LENGTH_ID = 1, 2, 3, 4
TIMESTAMP_ID = 0x1600
CHANNEL_ID = 0x4103
DATA_ID = 0x3300
MAX_PACKET = 1472
_IMM = 1 << 63

SCENARIOS = {
    # name: heap payload bytes, heaps at --scale 1
    "1k": dict(heap_size=1024, n_heaps=400_000, desc="1 KiB single-packet heaps"),
    "64k": dict(heap_size=65536, n_heaps=8192, desc="64 KiB heaps in <=1472-byte packets"),
}
ALLOCATORS = ["default", "pool"]
DEFAULT_CASES = [(s, src, a) for s in ("1k", "64k") for src in ("mem", "pcap") for a in ALLOCATORS]


def scenario_params(name, scale):
    p = dict(SCENARIOS[name])
    p["name"] = name
    p["n_heaps"] = max(1, int(round(p["n_heaps"] * scale)))
    return p


def expected_byte(cnt):
    return cnt % 251


def heap_packets(cnt, heap_size, payload):
    """The packets of one heap: 6 immediates in each, the data item's pointer in the first."""
    out = []
    offset = 0
    while offset < heap_size or offset == 0:
        items = [_IMM | (HEAP_CNT_ID << 48) | cnt, _IMM | (HEAP_LENGTH_ID << 48) | heap_size,
                 _IMM | (PAYLOAD_OFFSET_ID << 48) | offset, 0,
                 _IMM | (TIMESTAMP_ID << 48) | cnt * 2048, _IMM | (CHANNEL_ID << 48) | cnt % 4]
        if offset == 0:
            items.append((DATA_ID << 48) | 0)
        room = MAX_PACKET - 8 - 8 * len(items)
        chunk = payload[offset : offset + room]
        items[3] = _IMM | (PAYLOAD_LENGTH_ID << 48) | len(chunk)
        out.append(struct.pack(">BBBBHH", 0x53, 4, 2, 6, 0, len(items)) + struct.pack(f">{len(items)}Q", *items)
                   + chunk)
        offset += len(chunk)
        if offset >= heap_size:
            break
    return out


def generate_traffic(p, raw_path, pcap_path):
    fill = [bytes([v]) * p["heap_size"] for v in range(251)]
    n_packets = 0
    with open(raw_path, "wb") as raw, open(pcap_path, "wb") as pcap:
        pcap.write(pcap_global_header())
        for cnt in range(1, p["n_heaps"] + 1):
            for pkt in heap_packets(cnt, p["heap_size"], fill[expected_byte(cnt)]):
                raw.write(pkt)
                pcap.write(pcap_record(n_packets, pkt))
                n_packets += 1
    p["n_packets"] = n_packets


# ---------------------------------------------------------------------------
# Worker


def worker_main(args):
    import numpy as np

    import spead2
    import spead2.recv

    p = scenario_params(args.scenario, args.scale)
    source_data = open(args.file, "rb").read() if args.source == "mem" else None
    heap_size = p["heap_size"]
    # The pool keeps enough buffers for every heap that can be alive at once
    # (being assembled, in the ring, held by the consumer).
    n_buffers = args.ring_heaps + args.max_heaps + 4

    def run(verify):
        config = spead2.recv.StreamConfig(max_heaps=args.max_heaps)
        if args.allocator == "pool":
            config.memory_allocator = spead2.MemoryPool(0, heap_size, n_buffers, n_buffers)
        stream = spead2.recv.Stream(spead2.ThreadPool(1), config,
                                    spead2.recv.RingStreamConfig(heaps=args.ring_heaps))
        errors = []
        n = 0
        start = time.perf_counter()
        if source_data is not None:
            stream.add_buffer_reader(source_data)
        else:
            stream.add_udp_pcap_file_reader(args.file)
        if verify:
            for heap in stream:
                n += 1
                items = heap.get_items()
                data = [it for it in items if it.id == DATA_ID]
                imm = {it.id: it.immediate_value for it in items if it.is_immediate}
                if len(data) != 1 or imm.get(TIMESTAMP_ID) != heap.cnt * 2048:
                    errors.append(f"heap {heap.cnt}: items {[it.id for it in items]}")
                    continue
                payload = np.frombuffer(data[0], np.uint8)
                if len(payload) != heap_size or np.any(payload != expected_byte(heap.cnt)):
                    errors.append(f"heap {heap.cnt}: payload mismatch")
        else:
            for heap in stream:
                heap.cnt
                n += 1
        elapsed = time.perf_counter() - start
        stream.stop()
        stats = {k: int(v) for k, v in stream.stats.items()}
        if n != p["n_heaps"]:
            errors.append(f"{n} heaps, expected {p['n_heaps']}")
        return elapsed, stats, errors

    _, _, errors = run(verify=True)
    if errors:
        print(json.dumps({"ok": False, "errors": errors[:20], "spead2_file": spead2.__file__}))
        return 1
    times = []
    stats = None
    for _ in range(args.reps):
        elapsed, stats, errors = run(verify=False)
        if errors:
            print(json.dumps({"ok": False, "errors": errors[:20], "spead2_file": spead2.__file__}))
            return 1
        times.append(elapsed)
    print(json.dumps({
        "ok": True, "spead2_file": spead2.__file__, "spead2_version": spead2.__version__,
        "times": times, "best_heaps_per_s": p["n_heaps"] / min(times),
        "median_heaps_per_s": p["n_heaps"] / statistics.median(times), "stats": stats,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


# ---------------------------------------------------------------------------
# Driver


def run_worker(python, script, case_args, cwd, env):
    proc = subprocess.run([python, script, "--worker"] + case_args, cwd=cwd, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or result is None or not result.get("ok"):
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"worker failed ({python}, {' '.join(case_args)}): "
                           f"{result.get('errors') if result else 'no output'}")
    return result


def driver_main(args):
    script = os.path.abspath(__file__)
    cases = [c for c in DEFAULT_CASES
             if (not args.scenarios or c[0] in args.scenarios.split(","))
             and (not args.sources or c[1] in args.sources.split(","))
             and (not args.allocators or c[2] in args.allocators.split(","))]
    if not cases:
        raise SystemExit("no cases selected")
    tmpdir = tempfile.mkdtemp(prefix="spead2-bench-heap-", dir=args.tmpdir)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None) if args.ours_pythonpath is None else env.update(PYTHONPATH=args.ours_pythonpath)
    # numpy's OpenBLAS thread pool would otherwise compete for the cores.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    ref_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    interpreters = [("ours", sys.executable, env), ("ref", args.ref_python, ref_env)]
    results = []
    files = {}
    try:
        for scen in dict.fromkeys(c[0] for c in cases):
            p = scenario_params(scen, args.scale)
            paths = {"mem": os.path.join(tmpdir, scen + ".spead"), "pcap": os.path.join(tmpdir, scen + ".pcap")}
            generate_traffic(p, paths["mem"], paths["pcap"])
            print(f"# generated {scen}: {p['n_heaps']} heaps, {p['n_packets']} packets", file=sys.stderr)
            for _, source, alloc in [c for c in cases if c[0] == scen]:
                case_args = ["--scenario", scen, "--source", source, "--allocator", alloc,
                             "--file", paths[source], "--scale", str(args.scale), "--reps", str(args.reps),
                             "--max-heaps", str(args.max_heaps), "--ring-heaps", str(args.ring_heaps)]
                runs = {"ours": [], "ref": []}
                for rnd in range(args.rounds):
                    for label, python, e in interpreters:
                        r = run_worker(python, script, case_args, tmpdir, e)
                        files.setdefault(label, set()).add(r["spead2_file"])
                        runs[label].append(r)
                        print(f"#   {scen}/{source}/{alloc} round {rnd} {label}: "
                              f"{r['best_heaps_per_s'] / 1e3:.1f} kheap/s best, "
                              f"{r['median_heaps_per_s'] / 1e3:.1f} median", file=sys.stderr)
                summary = {"scenario": scen, "source": source, "allocator": alloc, "n_heaps": p["n_heaps"],
                           "n_packets": p["n_packets"]}
                for label in ("ours", "ref"):
                    summary[label] = {
                        "best_heaps_per_s": max(r["best_heaps_per_s"] for r in runs[label]),
                        "median_heaps_per_s": statistics.median(r["median_heaps_per_s"] for r in runs[label]),
                        "stats": runs[label][-1]["stats"], "runs": runs[label]}
                summary["ratio_best"] = summary["ours"]["best_heaps_per_s"] / summary["ref"]["best_heaps_per_s"]
                summary["ratio_median"] = (summary["ours"]["median_heaps_per_s"]
                                           / summary["ref"]["median_heaps_per_s"])
                results.append(summary)
            for path in paths.values():
                os.unlink(path)
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)
    if files.get("ours", set()) & files.get("ref", set()):
        raise SystemExit("ours and ref imported the same spead2")

    hdr = (f"{'scenario':<9}{'source':<7}{'alloc':<9}{'ours kheap/s':>13}{'ref kheap/s':>12}"
           f"{'ratio':>7}{'ratio(med)':>11}{'ours Gb/s':>10}{'ref Gb/s':>9}")
    print(hdr)
    print("-" * len(hdr))
    for s in results:
        o, r = s["ours"], s["ref"]
        size = SCENARIOS[s["scenario"]]["heap_size"]
        print(f"{s['scenario']:<9}{s['source']:<7}{s['allocator']:<9}"
              f"{o['best_heaps_per_s'] / 1e3:>13.1f}{r['best_heaps_per_s'] / 1e3:>12.1f}"
              f"{s['ratio_best']:>7.2f}{s['ratio_median']:>11.2f}"
              f"{o['best_heaps_per_s'] * size * 8e-9:>10.2f}{r['best_heaps_per_s'] * size * 8e-9:>9.2f}")
    print(f"# ours: {sorted(files.get('ours', []))}")
    print(f"# ref:  {sorted(files.get('ref', []))}")
    print(f"# {args.rounds} rounds x {args.reps} reps; ratio = ours/ref of best heaps/s, "
          "ratio(med) = of median heaps/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run one measurement (internal)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--source", choices=["mem", "pcap"])
    parser.add_argument("--allocator", choices=ALLOCATORS, default="default")
    parser.add_argument("--file")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply traffic size")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per worker")
    parser.add_argument("--rounds", type=int, default=3, help="ours/ref alternations per case")
    parser.add_argument("--max-heaps", type=int, default=4)
    parser.add_argument("--ring-heaps", type=int, default=16)
    parser.add_argument("--ref-python", default=os.path.expanduser("~/.cache/spead2-tests/ref-4.5.1/bin/python"))
    parser.add_argument("--ours-pythonpath", default=None,
                        help="PYTHONPATH for our workers (e.g. build/dev-pkg); default: none")
    parser.add_argument("--scenarios", help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--sources", help="comma-separated subset of mem,pcap")
    parser.add_argument("--allocators", help="comma-separated subset of " + ",".join(ALLOCATORS))
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--tmpdir")
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
