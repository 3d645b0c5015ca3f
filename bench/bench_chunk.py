#!/usr/bin/env python3
"""Chunk-placement throughput benchmark: this spead2 versus the reference spead2.

Two modes live in this one file:

driver (default)
    Generates SPEAD traffic once (pure Python, below), then for each
    scenario/source runs the worker under this interpreter (``sys.executable``,
    i.e. the ``spead2`` built from this repository) and under the reference
    interpreter (``--ref-python``), alternating ours, ref, ours, ref, ... for
    ``--rounds`` rounds, and prints a comparison table (and ``--json FILE``).

worker (``--worker``)
    Imports whichever ``spead2`` the interpreter provides, builds a
    ChunkRingStream with a numba place callback, feeds it the pre-generated
    traffic from memory (``add_buffer_reader``) or from a pcap file
    (``add_udp_pcap_file_reader``), consumes the chunks and times the run.
    Prints a JSON object as the last line of stdout.

See bench/README.md.
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

import bench_tool

# ---------------------------------------------------------------------------
# Scenarios (shared by driver and worker, so both sides agree on the layout)
# ---------------------------------------------------------------------------

TIMESTAMP_ID = 0x1600
CHANNEL_ID = 0x4103
HEAP_CNT_ID = 0x01
HEAP_LENGTH_ID = 0x02
PAYLOAD_OFFSET_ID = 0x03
PAYLOAD_LENGTH_ID = 0x04

# SPEAD-64-48: 8-byte header plus 6 immediate item pointers of 8 bytes each.
N_ITEMS = 6
SPEAD_OVERHEAD = 8 + 8 * N_ITEMS

TIMESTAMP_STEP = 2048  # timestamp increment between consecutive spectra
FIRST_CHUNK = 1000  # chunk id of the first chunk (timestamps do not start at 0)

# Traffic sizes: ~540-550 MB of SPEAD data per scenario, so that a "mem" worker
# (which holds the whole buffer in memory) stays well below 1 GiB RSS.  At the
# reference's speed on a small machine that is ~0.1 s per mem run and
# ~0.3-1 s per pcap run; use --scale to change it.
SCENARIOS = {
    # name: heap payload size, max packet size (SPEAD bytes incl. header),
    #       number of heaps at --scale 1, channels (heaps per timestamp),
    #       timestamps per chunk
    "1k": dict(heap_size=1024, max_packet=1472, n_heaps=500_000, n_chan=4, t_per_chunk=256,
               desc="1 KiB single-packet heaps"),
    "64k": dict(heap_size=65536, max_packet=1472, n_heaps=8192, n_chan=4, t_per_chunk=16,
                desc="64 KiB heaps in <=1472-byte packets"),
    "8k": dict(heap_size=8192, max_packet=8192 + SPEAD_OVERHEAD, n_heaps=65_536, n_chan=4,
               t_per_chunk=32, desc="8 KiB single-packet heaps"),
}

# (scenario, source) pairs run by default
DEFAULT_CASES = [
    ("1k", "mem"),
    ("1k", "pcap"),
    ("64k", "mem"),
    ("64k", "pcap"),
    ("8k", "mem"),
    ("8k", "pcap"),
]


def scenario_params(name, scale=1.0):
    p = dict(SCENARIOS[name])
    p["name"] = name
    t_steps = max(1, int(round(p["n_heaps"] * scale / p["n_chan"])))
    p["n_heaps"] = t_steps * p["n_chan"]
    p["payload_per_packet"] = p["max_packet"] - SPEAD_OVERHEAD
    p["packets_per_heap"] = -(-p["heap_size"] // p["payload_per_packet"])
    p["n_packets"] = p["n_heaps"] * p["packets_per_heap"]
    p["heaps_per_chunk"] = p["t_per_chunk"] * p["n_chan"]
    return p


def expected_byte(heap_cnt):
    """Payload fill byte of a heap (every payload byte of a heap has this value)."""
    return heap_cnt % 251


# ---------------------------------------------------------------------------
# Traffic generation (pure Python SPEAD-64-48 builder, raw and pcap output)
# ---------------------------------------------------------------------------

_IMM = 1 << 63


def _item(item_id, value):
    return _IMM | (item_id << 48) | value


def spead_packet(heap_cnt, heap_length, offset, payload, timestamp, channel):
    """Build one SPEAD-64-48 packet whose items are all immediate."""
    header = struct.pack(">BBBBHH", 0x53, 0x04, 2, 6, 0, N_ITEMS)
    items = struct.pack(
        ">6Q",
        _item(HEAP_CNT_ID, heap_cnt),
        _item(HEAP_LENGTH_ID, heap_length),
        _item(PAYLOAD_OFFSET_ID, offset),
        _item(PAYLOAD_LENGTH_ID, len(payload)),
        _item(TIMESTAMP_ID, timestamp),
        _item(CHANNEL_ID, channel),
    )
    return header + items + payload


def _ip_checksum(hdr):
    s = sum(struct.unpack(">10H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


_ETH = bytes.fromhex("020000000002" "020000000001") + b"\x08\x00"
_SRC_IP = bytes([10, 0, 0, 1])
_DST_IP = bytes([239, 1, 2, 3])


def pcap_global_header():
    # magic, v2.4, thiszone, sigfigs, snaplen, linktype 1 (Ethernet)
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def pcap_record(seq, udp_payload):
    udp_len = 8 + len(udp_payload)
    ip_len = 20 + udp_len
    ip = bytearray(
        struct.pack(">BBHHHBBH4s4s", 0x45, 0, ip_len, seq & 0xFFFF, 0x4000, 64, 17, 0,
                    _SRC_IP, _DST_IP)
    )
    ip[10:12] = struct.pack(">H", _ip_checksum(bytes(ip)))
    udp = struct.pack(">HHHH", 7148, 7148, udp_len, 0)  # checksum 0 = none (IPv4)
    frame = _ETH + bytes(ip) + udp + udp_payload
    ts_sec, ts_usec = divmod(seq, 1_000_000)
    return struct.pack("<IIII", ts_sec, ts_usec, len(frame), len(frame)) + frame


def generate_traffic(p, raw_path, pcap_path):
    """Write the scenario's packets to raw_path (concatenated) and/or pcap_path."""
    heap_size = p["heap_size"]
    ppp = p["payload_per_packet"]
    n_chan = p["n_chan"]
    t0 = FIRST_CHUNK * p["t_per_chunk"]
    fill = [bytes([v]) * heap_size for v in range(251)]
    raw = open(raw_path, "wb") if raw_path else None
    pcap = open(pcap_path, "wb") if pcap_path else None
    try:
        if pcap:
            pcap.write(pcap_global_header())
        seq = 0
        heap_cnt = 1
        for t in range(p["n_heaps"] // n_chan):
            timestamp = (t0 + t) * TIMESTAMP_STEP
            for chan in range(n_chan):
                payload = fill[expected_byte(heap_cnt)]
                for offset in range(0, heap_size, ppp):
                    pkt = spead_packet(heap_cnt, heap_size, offset, payload[offset : offset + ppp],
                                       timestamp, chan)
                    if raw:
                        raw.write(pkt)
                    if pcap:
                        pcap.write(pcap_record(seq, pkt))
                    seq += 1
                heap_cnt += 1
        assert seq == p["n_packets"], (seq, p["n_packets"])
    finally:
        if raw:
            raw.close()
        if pcap:
            pcap.close()


# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------


def make_place(p):
    """The place callback: spead2.recv.numba_place.timestamp_channel of this
    source tree (loaded by path, so the same code for both packages)."""
    return bench_tool.load("worker").load_numba_place().timestamp_channel(
        heap_size=p["heap_size"], channels=p["n_chan"], channel_step=1, timestamp_step=TIMESTAMP_STEP,
        timestamps_per_chunk=p["t_per_chunk"], timestamp_id=TIMESTAMP_ID, channel_id=CHANNEL_ID)


def worker_main(args):
    import numpy as np

    import spead2
    import spead2.recv

    p = scenario_params(args.scenario, args.scale)
    place = make_place(p)

    if args.source == "mem":
        with open(args.file, "rb") as f:
            source_data = f.read()
        expect_len = p["n_packets"] * SPEAD_OVERHEAD + p["n_heaps"] * p["heap_size"]
        if len(source_data) != expect_len:
            raise SystemExit(f"traffic file {args.file} has {len(source_data)} bytes, "
                             f"expected {expect_len}")
    else:
        source_data = None

    hpc = p["heaps_per_chunk"]
    heap_size = p["heap_size"]
    chunk_bytes = hpc * heap_size
    max_chunks = args.max_chunks
    n_chunks = max_chunks + args.extra_chunks
    # Allocate and touch the chunk memory once; it is reused by every run.
    present_arrays = [np.zeros(hpc, np.uint8) for _ in range(n_chunks)]
    data_arrays = [np.full(chunk_bytes, 255, np.uint8) for _ in range(n_chunks)]
    t0 = FIRST_CHUNK * p["t_per_chunk"]
    expected_chunks = -(-p["n_heaps"] // hpc)

    def run(verify):
        # --spin-us is this package's option only (ChunkRingbuffer(spin_us=)).
        data_ring = (spead2.recv.ChunkRingbuffer(n_chunks, spin_us=args.spin_us) if args.spin_us
                     else spead2.recv.ChunkRingbuffer(n_chunks))
        free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
        stream_config = spead2.recv.StreamConfig(
            max_heaps=args.max_heaps,
            memcpy=spead2.MEMCPY_NONTEMPORAL if args.memcpy == "nontemporal" else spead2.MEMCPY_STD)
        chunk_config = spead2.recv.ChunkStreamConfig(
            items=place.items,
            max_chunks=max_chunks,
            place=place,
        )
        stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), stream_config, chunk_config, data_ring, free_ring
        )
        for i in range(n_chunks):
            if verify:
                data_arrays[i].fill(255)
            stream.add_free_chunk(spead2.recv.Chunk(present=present_arrays[i], data=data_arrays[i]))
        complete = 0
        n_chunks_seen = 0
        errors = []
        start = time.perf_counter()
        if source_data is not None:
            stream.add_buffer_reader(source_data)
        else:
            stream.add_udp_pcap_file_reader(args.file)
        for chunk in data_ring:
            present = chunk.present
            complete += int(np.count_nonzero(present))
            n_chunks_seen += 1
            if verify:
                cid = chunk.chunk_id
                data = chunk.data.reshape(hpc, heap_size)
                idx = np.arange(hpc)
                t = (cid - FIRST_CHUNK) * p["t_per_chunk"] + idx // p["n_chan"]
                heap_cnt = 1 + t * p["n_chan"] + idx % p["n_chan"]
                valid = (t >= 0) & (heap_cnt <= p["n_heaps"])
                if np.any((present != 0) & ~valid):
                    errors.append(f"chunk {cid}: heaps marked present outside the sent range")
                if np.any((present == 0) & valid):
                    errors.append(f"chunk {cid}: {int(np.sum((present == 0) & valid))} heaps missing")
                sel = (present != 0) & valid
                if np.any(data[sel] != expected_byte(heap_cnt[sel]).astype(np.uint8)[:, None]):
                    errors.append(f"chunk {cid}: payload mismatch")
            stream.add_free_chunk(chunk)
        elapsed = time.perf_counter() - start
        # Read the statistics only after stop(): the data ring may be stopped
        # before the reader's last batch has been added to the statistics
        # (seen with both packages).
        stream.stop()
        stats = {k: int(v) for k, v in stream.stats.items()}
        if complete != p["n_heaps"]:
            errors.append(f"{complete} complete heaps, expected {p['n_heaps']}")
        # Both implementations may also emit a few empty chunks preceding the
        # first one (the window is filled up to the first chunk id); those are
        # checked above to hold no heaps.
        if n_chunks_seen < expected_chunks:
            errors.append(f"{n_chunks_seen} chunks, expected at least {expected_chunks}")
        if stats.get("packets") != p["n_packets"]:
            errors.append(f"stats packets={stats.get('packets')}, expected {p['n_packets']}")
        stats["chunks_received"] = n_chunks_seen
        return elapsed, complete, stats, errors

    # Warm-up run with full content verification (not timed in the results).
    _, _, _, errors = run(verify=True)
    if errors:
        print(json.dumps({"ok": False, "errors": errors[:20], "spead2_file": spead2.__file__}))
        print("VERIFY FAILED: " + "; ".join(errors[:20]), file=sys.stderr)
        return 1

    times = []
    stats = None
    for _ in range(args.reps):
        elapsed, complete, stats, errors = run(verify=False)
        if errors:
            print(json.dumps({"ok": False, "errors": errors[:20], "spead2_file": spead2.__file__}))
            print("CHECK FAILED: " + "; ".join(errors), file=sys.stderr)
            return 1
        times.append(elapsed)

    # The copy limit: the packet rate if moving the heap payload bytes were
    # the receiver's only work -- numpy copies of the same number of bytes
    # from the streamed source into the same ring of chunk buffers
    # (spead2_bench's copylimit module, which spead2_bench measures with too).
    if source_data is not None:
        src = np.frombuffer(source_data, np.uint8)
    else:
        with open(args.file, "rb") as f:
            src = np.frombuffer(f.read(), np.uint8)
    copylimit = bench_tool.load("copylimit")
    copy_times = [copylimit.copy_seconds(src, p["n_heaps"] * heap_size, data_arrays)
                  for _ in range(max(1, args.reps))]

    def rates(t):
        return {
            "seconds": t,
            "packets_per_s": p["n_packets"] / t,
            "heaps_per_s": p["n_heaps"] / t,
            "payload_gbps": p["n_heaps"] * heap_size * 8 / t / 1e9,
        }

    result = {
        "ok": True,
        "spead2_file": spead2.__file__,
        "spead2_version": spead2.__version__,
        "python": sys.executable,
        "scenario": args.scenario,
        "source": args.source,
        "n_packets": p["n_packets"],
        "n_heaps": p["n_heaps"],
        "heaps_complete": p["n_heaps"],  # checked equal in every run
        "times": times,
        "best": rates(min(times)),
        "copy_limit": rates(min(copy_times)),
        "median": rates(statistics.median(times)),
        "stats": stats,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_worker(python, script, case_args, cwd, env):
    cmd = [python, script, "--worker"] + case_args
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or result is None or not result.get("ok"):
        sys.stderr.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"worker failed ({python}, {' '.join(case_args)}): "
                           f"{result.get('errors') if result else 'no output'}")
    return result


def driver_main(args):
    script = os.path.abspath(__file__)
    repo = os.path.dirname(os.path.dirname(script))
    cases = DEFAULT_CASES
    if args.scenarios:
        wanted = args.scenarios.split(",")
        cases = [c for c in cases if c[0] in wanted]
    if args.sources:
        wanted = args.sources.split(",")
        cases = [c for c in cases if c[1] in wanted]
    if not cases:
        raise SystemExit("no cases selected")

    tmpdir = tempfile.mkdtemp(prefix="spead2-bench-", dir=args.tmpdir)
    # Workers run with cwd outside the repository and without PYTHONPATH so
    # that each interpreter imports its own installed spead2.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # scipy (imported for LowLevelCallable) loads OpenBLAS, whose idle thread
    # pool otherwise competes for the machine's cores.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if args.ref_python is None:
        # The reference virtualenv of spead2_bench (spead2 4.5.1, numba, scipy), made on first use.
        from spead2.tools.bench.context import reference_python

        args.ref_python = reference_python(os.environ.get("SPEAD2_BENCH_REF_VENV") or None,
                                           lambda msg: print(f"# {msg}", file=sys.stderr))
    interpreters = [("ours", args.ours_python or sys.executable), ("ref", args.ref_python)]
    results = []
    seen_files = {}
    try:
        for scen in dict.fromkeys(c[0] for c in cases):
            p = scenario_params(scen, args.scale)
            sources = [c[1] for c in cases if c[0] == scen]
            raw_path = os.path.join(tmpdir, f"{scen}.spead") if "mem" in sources else None
            pcap_path = os.path.join(tmpdir, f"{scen}.pcap") if "pcap" in sources else None
            t = time.perf_counter()
            generate_traffic(p, raw_path, pcap_path)
            print(f"# generated {scen}: {p['n_heaps']} heaps, {p['n_packets']} packets "
                  f"({p['packets_per_heap']}/heap) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
            for source in sources:
                path = raw_path if source == "mem" else pcap_path
                case_args = ["--scenario", scen, "--source", source, "--file", path,
                             "--scale", str(args.scale), "--reps", str(args.reps),
                             "--max-heaps", str(args.max_heaps),
                             "--max-chunks", str(args.max_chunks),
                             "--extra-chunks", str(args.extra_chunks), "--memcpy", args.memcpy]
                per_impl = {"ours": [], "ref": []}
                for rnd in range(args.rounds):
                    for label, python in interpreters:
                        extra = ["--spin-us", str(args.spin_us)] if label == "ours" and args.spin_us else []
                        r = run_worker(python, script, case_args + extra, tmpdir, env)
                        seen_files.setdefault(label, set()).add(r["spead2_file"])
                        per_impl[label].append(r)
                        print(f"#   {scen}/{source} round {rnd} {label}: "
                              f"{r['best']['packets_per_s'] / 1e6:.3f} Mpkt/s best, "
                              f"{r['median']['packets_per_s'] / 1e6:.3f} median, "
                              f"rss {r['max_rss_mib']:.0f} MiB "
                              f"[{r['spead2_file']}]", file=sys.stderr)
                summary = {"scenario": scen, "source": source, "desc": p["desc"],
                           "n_packets": p["n_packets"], "n_heaps": p["n_heaps"]}
                for label in ("ours", "ref"):
                    rs = per_impl[label]
                    summary[label] = {
                        "best_packets_per_s": max(r["best"]["packets_per_s"] for r in rs),
                        "median_packets_per_s": statistics.median(
                            r["median"]["packets_per_s"] for r in rs),
                        "best_heaps_per_s": max(r["best"]["heaps_per_s"] for r in rs),
                        "best_payload_gbps": max(r["best"]["payload_gbps"] for r in rs),
                        "copy_limit_packets_per_s": max(r["copy_limit"]["packets_per_s"] for r in rs),
                        "heaps_complete": rs[-1]["heaps_complete"],
                        "stats": rs[-1]["stats"],
                        "spead2_file": rs[-1]["spead2_file"],
                        "spead2_version": rs[-1]["spead2_version"],
                        "runs": rs,
                    }
                summary["ratio_best"] = (summary["ours"]["best_packets_per_s"]
                                         / summary["ref"]["best_packets_per_s"])
                summary["ratio_median"] = (summary["ours"]["median_packets_per_s"]
                                           / summary["ref"]["median_packets_per_s"])
                # Measured in the same runs, by whichever worker saw the higher rate.
                copy_limit = max(summary["ours"]["copy_limit_packets_per_s"],
                                 summary["ref"]["copy_limit_packets_per_s"])
                summary["copy_limit_packets_per_s"] = copy_limit
                summary["ours_of_copy_limit"] = summary["ours"]["best_packets_per_s"] / copy_limit
                summary["ref_of_copy_limit"] = summary["ref"]["best_packets_per_s"] / copy_limit
                # Spread over the alternated rounds: each round's ours/ref ratio and
                # each round's fraction of that round's own copy limit.
                summary["ratio_rounds"] = [o["best"]["packets_per_s"] / r["best"]["packets_per_s"]
                                           for o, r in zip(per_impl["ours"], per_impl["ref"])]
                summary["ours_of_copy_rounds"] = [o["best"]["packets_per_s"] / o["copy_limit"]["packets_per_s"]
                                                  for o in per_impl["ours"]]
                results.append(summary)
            for path in (raw_path, pcap_path):
                if path and not args.keep_traffic:
                    os.unlink(path)
    finally:
        if not args.keep_traffic:
            for name in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, name))
            os.rmdir(tmpdir)

    # Sanity: the two sides really imported different packages.
    ours_files, ref_files = seen_files.get("ours", set()), seen_files.get("ref", set())
    if ours_files & ref_files:
        raise SystemExit(f"ours and ref imported the same spead2: {ours_files & ref_files}")
    for f in ref_files:
        if os.path.realpath(f).startswith(os.path.realpath(repo) + os.sep):
            raise SystemExit(f"reference worker imported spead2 from this repository: {f}")

    hdr = (f"{'scenario':<9}{'source':<7}{'ours Mpkt/s':>12}{'ref Mpkt/s':>12}"
           f"{'ratio':>8}{'ratio(med)':>11}{'ours Gb/s':>11}{'ref Gb/s':>10}"
           f"{'ours kheap/s':>14}{'ref kheap/s':>13}{'copy Mpkt/s':>13}{'ours/copy':>10}{'ref/copy':>9}"
           f"{'ratio range':>13}{'ours/copy range':>16}")
    print(hdr)
    print("-" * len(hdr))
    for s in results:
        o, r = s["ours"], s["ref"]
        print(f"{s['scenario']:<9}{s['source']:<7}"
              f"{o['best_packets_per_s'] / 1e6:>12.3f}{r['best_packets_per_s'] / 1e6:>12.3f}"
              f"{s['ratio_best']:>8.2f}{s['ratio_median']:>11.2f}"
              f"{o['best_payload_gbps']:>11.2f}{r['best_payload_gbps']:>10.2f}"
              f"{o['best_heaps_per_s'] / 1e3:>14.1f}{r['best_heaps_per_s'] / 1e3:>13.1f}"
              f"{s['copy_limit_packets_per_s'] / 1e6:>13.3f}{s['ours_of_copy_limit']:>10.2f}"
              f"{s['ref_of_copy_limit']:>9.2f}"
              f"{min(s['ratio_rounds']):>7.2f}-{max(s['ratio_rounds']):<5.2f}"
              f"{min(s['ours_of_copy_rounds']):>10.2f}-{max(s['ours_of_copy_rounds']):<5.2f}")
    print(f"# memcpy={args.memcpy}; chunk ring: {args.max_chunks} + {args.extra_chunks} chunks"
          + (f"; ours: data ring spin_us={args.spin_us:g}" if args.spin_us else ""))
    print(f"# ours: {sorted(ours_files)}")
    print(f"# ref:  {sorted(ref_files)}")
    print(f"# {args.rounds} rounds x {args.reps} reps; 'ratio' = ours/ref of best packets/s, "
          f"'ratio(med)' = ours/ref of median packets/s; 'copy' = the copy limit (numpy copies of the "
          f"same payload bytes from the source into the same chunk ring), 'x/copy' = best rate / copy limit")

    if args.json:
        out = {
            "config": {k: v for k, v in vars(args).items()},
            "python_ours": args.ours_python or sys.executable,
            "python_ref": args.ref_python,
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"# wrote {args.json}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run one measurement (internal)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--source", choices=["mem", "pcap"])
    parser.add_argument("--file", help="traffic file (worker)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply traffic size")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per worker")
    parser.add_argument("--rounds", type=int, default=3, help="ours/ref alternations per case")
    parser.add_argument("--max-heaps", type=int, default=4)
    parser.add_argument("--max-chunks", type=int, default=4)
    parser.add_argument("--extra-chunks", type=int, default=4,
                        help="chunks allocated beyond max_chunks")
    parser.add_argument("--memcpy", choices=["std", "nontemporal"], default="std",
                        help="StreamConfig.memcpy of both receivers (nontemporal: MEMCPY_NONTEMPORAL, for "
                             "chunks the CPU never reads back; use a ring larger than the cache, e.g. "
                             "--extra-chunks 124, to measure cold destinations) [%(default)s]")
    parser.add_argument("--spin-us", type=float, default=0.0,
                        help="ours only: ChunkRingbuffer(spin_us=) of the data ring, how long the consumer "
                             "polls before it sleeps (the reference has no such option) [%(default)s]")
    parser.add_argument("--ref-python", default=None)
    parser.add_argument("--ours-python", default=None,
                        help="interpreter for the 'ours' side [this one]; with --ref-python, two builds of "
                             "this package can be compared (e.g. wrappers that set PYTHONPATH to each build)")
    parser.add_argument("--scenarios", help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--sources", help="comma-separated subset of mem,pcap")
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--tmpdir", help="where to write the traffic files")
    parser.add_argument("--keep-traffic", action="store_true")
    args = parser.parse_args()
    if args.worker:
        if not (args.scenario and args.source and args.file):
            parser.error("--worker needs --scenario, --source and --file")
        return worker_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
