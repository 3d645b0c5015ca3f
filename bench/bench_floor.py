#!/usr/bin/env python3
"""Floors for chunk placement: what the simplest receiver could reach here.

bench_chunk.py reports each receiver as a fraction of the *copy limit* (a
plain copy of the payload bytes).  No receiver can reach 1.0: it must also
read every packet's header and find where the payload goes, and a pcap
replay must also map the capture.  This measures, on the same traffic
(bench_chunk.py's generator and scenarios) and in one process each:

copy
    the copy limit in C (``memcpy`` of the payload bytes, one chunk at a time);
place
    a bare receiver in C: for each packet, read the item pointers and copy
    the payload to its heap's place in the chunk ring; no checks, no
    statistics, no callback;
populate
    for the pcap file: mapping it and filling its page tables
    (``MADV_POPULATE_READ``), the kernel's share of a replay from the page
    cache, which the pcap reader overlaps on a helper thread;
read
    the same file through ``read()`` in 4 MiB blocks, for comparison.

Each is printed in packets per second of the scenario and as a fraction of
``copy`` in the same round; ``place / copy`` is the most any per-packet
receiver could show in bench_chunk.py from memory, ``populate`` the most a
replay through a file mapping could reach from pcap.  Needs a C compiler
(``cc``).

    python3 bench/bench_floor.py [--scenarios 1k,64k,8k] [--rounds 5]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import bench_chunk

HERE = os.path.dirname(os.path.abspath(__file__))
# Chunk ring as bench_chunk.py's default: max_chunks 4 + extra 4.
N_CHUNKS = 8


def build(tmpdir, library=False):
    """Compile floor.c into tmpdir: the program, or (library) the shared
    library with just floor_place, for bench_bare.py; returns its path."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("needs a C compiler (cc) to build bench/floor.c")
    out = os.path.join(tmpdir, "floor.so" if library else "floor")
    flags = ["-shared", "-fPIC", "-DFLOOR_LIBRARY"] if library else []
    subprocess.run([cc, "-O2", "-march=native", *flags, "-o", out, os.path.join(HERE, "floor.c")], check=True)
    return out


def run(exe, *args):
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"floor {args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    out = proc.stdout
    result = {}
    for line in out.splitlines():
        what, seconds, count = line.split()
        result[what] = (float(seconds), int(count))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="1k,64k,8k")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the amount of traffic")
    parser.add_argument("--tmpdir", help="where to write the traffic files")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    for s in scenarios:
        if s not in bench_chunk.SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    tmpdir = tempfile.mkdtemp(prefix="spead2-floor-", dir=args.tmpdir)
    try:
        exe = build(tmpdir)
        print(f"{'scenario':<9}{'what':<10}{'Mpkt/s (median)':>16}{'range':>16}{'/ copy (median)':>17}"
              f"{'range':>12}")
        for scen in scenarios:
            p = bench_chunk.scenario_params(scen, args.scale)
            raw = os.path.join(tmpdir, f"{scen}.spead")
            pcap = os.path.join(tmpdir, f"{scen}.pcap")
            bench_chunk.generate_traffic(p, raw, pcap)
            chunk_bytes = p["heaps_per_chunk"] * p["heap_size"]
            rates = {k: [] for k in ("copy", "place", "populate", "read")}
            fractions = {k: [] for k in rates}
            for _ in range(args.rounds):
                r = run(exe, "copy", raw, chunk_bytes, N_CHUNKS)
                r.update(run(exe, "place", raw, chunk_bytes, N_CHUNKS, p["heap_size"]))
                if r["verified"][1] == 0:
                    raise SystemExit("floor place: no heap checked")
                r.update(run(exe, "map", pcap))
                copy_rate = p["n_packets"] / r["copy"][0]
                for k in rates:
                    rate = p["n_packets"] / r[k][0]
                    rates[k].append(rate)
                    fractions[k].append(rate / copy_rate)
            for k in rates:
                print(f"{scen:<9}{k:<10}{statistics.median(rates[k]) / 1e6:>16.2f}"
                      f"{min(rates[k]) / 1e6:>9.2f}-{max(rates[k]) / 1e6:<6.2f}"
                      f"{statistics.median(fractions[k]):>17.2f}"
                      f"{min(fractions[k]):>7.2f}-{max(fractions[k]):<4.2f}")
            os.unlink(raw)
            os.unlink(pcap)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
