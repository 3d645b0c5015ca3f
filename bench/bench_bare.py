#!/usr/bin/env python3
"""spead2's chunk receiver against a bare placement loop, in one process.

On a shared VM the memory bandwidth drifts by 10-50 % between runs and even
between rounds, so two builds measured one after the other can differ by
more than a change being judged.  This puts a reference that drifts the same
way right next to the receiver: in one worker process, alternately,

recv
    a ``ChunkRingStream`` with bench_chunk.py's numba place callback,
    reading the traffic from memory (``add_buffer_reader``) or, with
    ``--sources pcap``, replaying bench_chunk.py's pcap file
    (``add_udp_pcap_file_reader``);
bare
    bench/floor.c's bare receiver (``floor_place``: read the item pointers,
    copy the payload to its heap's place, nothing else; for pcap
    ``floor_place_pcap``, which maps the file and walks its records with
    nothing done ahead), loaded with ctypes and run on the same traffic into
    the same chunk arrays.

It reports ``recv / bare`` for each pair of runs.  With several ``--python``
(interpreters or wrappers whose ``spead2`` is a different build) the ratios
compare the builds with the drift cancelled.  Needs numba and scipy (for the
place callback) and a C compiler.

    python3 bench/bench_bare.py [--scenarios 1k,64k,8k] [--sources mem,pcap] \\
        [--rounds 3] [--python A=/path/to/python --python B=...]
"""

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench_chunk
from bench_floor import N_CHUNKS, build

MAX_CHUNKS = 4   # bench_chunk.py's default; the ring holds N_CHUNKS = 4 more


def worker_main(args):
    import numpy as np

    import spead2
    import spead2.recv

    p = bench_chunk.scenario_params(args.scenario, args.scale)
    place = bench_chunk.make_place(p)
    pcap = args.source == "pcap"
    if not pcap:
        with open(args.file, "rb") as f:
            source = f.read()
    hpc = p["heaps_per_chunk"]
    chunk_bytes = hpc * p["heap_size"]
    data = [np.full(chunk_bytes, 255, np.uint8) for _ in range(N_CHUNKS)]
    present = [np.zeros(hpc, np.uint8) for _ in range(N_CHUNKS)]
    lib = ctypes.CDLL(args.lib)
    lib.floor_place.restype = ctypes.c_size_t
    lib.floor_place.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    lib.floor_place_pcap.restype = ctypes.c_size_t
    lib.floor_place_pcap.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    chunk_ptrs = (ctypes.c_void_p * N_CHUNKS)(*[a.ctypes.data for a in data])

    def recv():
        data_ring = spead2.recv.ChunkRingbuffer(N_CHUNKS)
        free_ring = spead2.recv.ChunkRingbuffer(N_CHUNKS)
        stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), spead2.recv.StreamConfig(max_heaps=4),
            spead2.recv.ChunkStreamConfig(items=place.items, max_chunks=MAX_CHUNKS, place=place),
            data_ring, free_ring)
        for i in range(N_CHUNKS):
            stream.add_free_chunk(spead2.recv.Chunk(present=present[i], data=data[i]))
        complete = 0
        start = time.perf_counter()
        if pcap:
            stream.add_udp_pcap_file_reader(args.file)
        else:
            stream.add_buffer_reader(source)
        for chunk in data_ring:
            complete += int(np.count_nonzero(chunk.present))
            stream.add_free_chunk(chunk)
        elapsed = time.perf_counter() - start
        stream.stop()
        if complete != p["n_heaps"]:
            raise SystemExit(f"receiver: {complete} complete heaps, expected {p['n_heaps']}")
        return elapsed

    def bare():
        start = time.perf_counter()   # ctypes releases the GIL for the call
        if pcap:
            n = lib.floor_place_pcap(args.file.encode(), chunk_ptrs, N_CHUNKS, chunk_bytes, p["heap_size"])
        else:
            n = lib.floor_place(source, len(source), chunk_ptrs, N_CHUNKS, chunk_bytes, p["heap_size"])
        elapsed = time.perf_counter() - start
        if n != p["n_packets"]:
            raise SystemExit(f"bare loop: {n} packets, expected {p['n_packets']}")
        return elapsed

    recv()   # warm-up of both (and of the callback)
    bare()
    pairs = []
    for _ in range(args.reps):
        pairs.append((p["n_packets"] / recv(), p["n_packets"] / bare()))
    print(json.dumps({"spead2_file": spead2.__file__, "pairs": pairs}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="1k,64k,8k")
    parser.add_argument("--sources", default="mem", help="mem, pcap or both (comma-separated) [%(default)s]")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per build and scenario")
    parser.add_argument("--reps", type=int, default=4, help="recv/bare pairs per worker")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the amount of traffic")
    parser.add_argument("--python", action="append", metavar="LABEL=PATH",
                        help="an interpreter (or wrapper) whose spead2 is measured; repeat [this one]")
    parser.add_argument("--tmpdir", help="where to write the traffic files")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="mem", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    pythons = [p.split("=", 1) for p in args.python] if args.python else [["this", sys.executable]]
    scenarios = args.scenarios.split(",")
    for s in scenarios:
        if s not in bench_chunk.SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    sources = args.sources.split(",")
    for s in sources:
        if s not in ("mem", "pcap"):
            parser.error(f"unknown source {s!r}")
    tmpdir = tempfile.mkdtemp(prefix="spead2-bare-", dir=args.tmpdir)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    try:
        lib = build(tmpdir, library=True)
        print(f"{'scenario':<9}{'source':<7}{'build':<10}{'recv Mpkt/s':>12}{'bare Mpkt/s':>12}"
              f"{'recv / bare (median)':>22}{'range':>12}")
        for scen in scenarios:
            p = bench_chunk.scenario_params(scen, args.scale)
            files = {"mem": os.path.join(tmpdir, f"{scen}.spead"), "pcap": os.path.join(tmpdir, f"{scen}.pcap")}
            bench_chunk.generate_traffic(p, files["mem"] if "mem" in sources else None,
                                         files["pcap"] if "pcap" in sources else None)
            for source in sources:
                pairs = {label: [] for label, _ in pythons}
                for _ in range(args.rounds):
                    for label, python in pythons:
                        cmd = [python, os.path.abspath(__file__), "--worker", "--scenario", scen,
                               "--source", source, "--scale", str(args.scale), "--file", files[source],
                               "--lib", lib, "--reps", str(args.reps)]
                        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmpdir)
                        if proc.returncode != 0:
                            raise SystemExit(f"worker {label} failed: {proc.stderr.strip()[-2000:]}")
                        pairs[label] += json.loads(proc.stdout.strip().splitlines()[-1])["pairs"]
                for label, got in pairs.items():
                    ratios = [r / b for r, b in got]
                    print(f"{scen:<9}{source:<7}{label:<10}{statistics.median(r for r, _ in got) / 1e6:>12.2f}"
                          f"{statistics.median(b for _, b in got) / 1e6:>12.2f}"
                          f"{statistics.median(ratios):>22.3f}{min(ratios):>7.3f}-{max(ratios):<5.3f}")
                os.unlink(files[source])
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
