"""The command line of ``spead2_bench`` (also ``python -m spead2.tools.bench``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from spead2.tools import _cli

from . import sender, worker
from .context import Progress, cache_dir
from .report import format_table, plot
from .run import REF_VERSION, run_all
from .session import BenchError
from .traffic import FLAVOURS, Traffic
from .transports import TRANSPORT_NAMES, TRANSPORTS


def _flavour(text):
    return _cli.flavour_bits(text, FLAVOURS)


def _transports(text):
    names = [n for n in text.replace(" ", "").split(",") if n]
    bad = [n for n in names if n not in TRANSPORTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown transport(s) {', '.join(bad) or text!r}; "
                                         f"choose from {', '.join(TRANSPORTS)}")
    return list(dict.fromkeys(names))


#: Most group members --streams accepts.
MAX_STREAMS = 64


def _streams(text):
    """``plain`` (one ChunkRingStream, no group) or a number of group members, or a list of them."""
    values = []
    for v in text.replace(" ", "").split(","):
        if not v:
            continue
        if v.lower() == "plain":
            values.append(None)
            continue
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{v!r}: give the number of group members (1 to {MAX_STREAMS}) or 'plain'") from None
        if not 1 <= n <= MAX_STREAMS:
            raise argparse.ArgumentTypeError(f"{v}: a group has 1 to {MAX_STREAMS} members")
        values.append(n)
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return list(dict.fromkeys(values))


def _pin(text):
    """on (True), off (False) or a list of CPU numbers (so "0" is CPU 0, not off)."""
    if not text.strip().replace(",", "").replace(" ", "").isdigit():
        return _cli.on_off(text)
    return _cli.cpu_list(text)


def build_parser():
    p = argparse.ArgumentParser(
        prog="spead2_bench",
        description="Run one SPEAD traffic pattern through every receive transport (memory buffer, pcap "
                    "replay, kernel UDP over loopback, ibverbs) into the same chunk placement and "
                    "compare throughput, CPU cost, loss and the highest lossless rate.",
    )
    t = p.add_argument_group("traffic")
    t.add_argument("--heap-size", type=_cli.positive_int, default=None, metavar="BYTES",
                   help="payload bytes per heap [65536; --quick: 8192]")
    t.add_argument("--packet-size", type=_cli.int_list, action="append", default=None, metavar="BYTES[,BYTES...]",
                   help="maximum SPEAD packet size (UDP payload); repeat or give a list to sweep (the plot's "
                        "x axis) [1472]")
    t.add_argument("--heaps", type=_cli.positive_int, default=None, metavar="N",
                   help="heaps per run [256 MiB of payload; --quick: 2 MiB]")
    t.add_argument("--flavour", type=_flavour, default=48, metavar="SPEAD-64-XX",
                   help="protocol flavour (heap address bits 24, 32, 40 or 48) [SPEAD-64-48]")
    t.add_argument("--channels", type=_cli.positive_int, default=4, metavar="N",
                   help="heaps per timestamp (frequency channels) [4]")
    r = p.add_argument_group("what to run")
    r.add_argument("--transports", type=_transports, default=list(TRANSPORT_NAMES), metavar="LIST",
                   help=f"comma-separated subset of {','.join(TRANSPORT_NAMES)} [all]")
    r.add_argument("--rate-search", type=_cli.on_off, default=True, metavar="on|off",
                   help="search for the highest lossless rate of the live transports [on]")
    r.add_argument("--rate-steps", type=_cli.positive_int, default=None, metavar="N",
                   help="at most this many rate-search steps per measurement [8; --quick: 3]")
    r.add_argument("--step-time", type=_cli.positive_float, default=None, metavar="SECONDS",
                   help="traffic per rate-search step, in seconds at the step's rate [0.5; --quick: 0.1]")
    r.add_argument("--rate-tolerance", type=_cli.positive_float, default=0.05, metavar="FRACTION",
                   help="stop the search when the bracket is narrower than this fraction [0.05]")
    r.add_argument("--reps", type=_cli.positive_int, default=None, metavar="N",
                   help="runs of the buffer and pcap transports; the fastest counts [5; --quick: 1]")
    r.add_argument("--rounds", type=_cli.positive_int, default=1, metavar="N",
                   help="measure everything N times, ours and the reference taking turns, and report the "
                        "median round and the spread of the ratios [1]")
    r.add_argument("--quick", action="store_true", help="tiny sizes and a short rate search (for tests)")
    g = p.add_argument_group("chunk stream groups")
    g.add_argument("--streams", type=_streams, default=None, metavar="N[,N...]",
                   help="receive into a ChunkStreamRingGroup of N members (heap i goes to member i mod N: "
                        "N buffers, N capture files, N UDP ports, N ibverbs endpoints); 'plain' is one "
                        "ChunkRingStream, the default; a list such as plain,1,2,4 measures each in turn")
    g.add_argument("--eviction-mode", choices=("lossless", "lossy"), default="lossless", type=str.lower,
                   help="the groups' eviction mode [lossless]")
    g.add_argument("--pin", type=_pin, default=True, metavar="on|off|CPU[,CPU...]",
                   help="pin the thread of stream (member) i to the i-th CPU the benchmark may use, or of "
                        "the list given, cyclically; a plain stream gets the first [on]")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the results as JSON (- for standard output)")
    o.add_argument("--plot", metavar="FILE.png",
                   help="plot payload throughput against packet size per transport (needs matplotlib)")
    c = p.add_argument_group("reference")
    c.add_argument("--compare-reference", action="store_true",
                   help=f"also run everything with the reference spead2 {REF_VERSION} and add ratio columns")
    c.add_argument("--ref-venv", metavar="PATH", default=None,
                   help="virtualenv of the reference, created on demand [$SPEAD2_BENCH_REF_VENV, else "
                        f"{os.path.join(cache_dir(), 'ref-' + REF_VERSION)}]")
    c.add_argument("--ref-python", metavar="PATH", default=None, help=argparse.SUPPRESS)
    i = p.add_argument_group("ibverbs")
    i.add_argument("--ibv-interface", metavar="ADDR",
                   help="IPv4 address of a real RDMA-capable interface; without it the emulated device is used")
    i.add_argument("--ibv-endpoint", type=_cli.endpoint, metavar="HOST:PORT",
                   help="address the ibverbs receiver listens on (a multicast group, or the interface "
                        "address) [ADDR:7148]")
    i.add_argument("--ibv-buffer-size", type=_cli.positive_int, default=16 << 20, metavar="BYTES",
                   help="ibverbs receive buffer [16 MiB]")
    i.add_argument("--ibv-emulator", metavar="PATH",
                   help="the emulated device: libspead2_ibv_emulator.so, or a tests/ibv_emulator directory to "
                        "build it from [the one in the package, else the source tree's, built into the cache]")
    i.add_argument("--send-interface", metavar="ADDR", default=None,
                   help="local address the sender sends from (for a real device: the other port) [any]")
    m = p.add_argument_group("files")
    m.add_argument("--tmpdir", metavar="DIR", help="where the traffic files go [the system's temp dir]")
    m.add_argument("--keep-traffic", action="store_true", help="keep the traffic files and worker logs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    return p


def _finish_args(parser, args):
    q = args.quick
    if args.heap_size is None:
        args.heap_size = 8192 if q else 65536
    if args.packet_size is None:
        args.packet_sizes = [1472]
    else:
        args.packet_sizes = sorted(dict.fromkeys(v for group in args.packet_size for v in group))
    if args.heaps is None:
        args.heaps = max(16, ((2 << 20) if q else (256 << 20)) // args.heap_size)
    if args.rate_steps is None:
        args.rate_steps = 3 if q else 8
    if args.step_time is None:
        args.step_time = 0.1 if q else 0.5
    if args.reps is None:
        args.reps = 1 if q else 5
    args.stream_list = args.streams or [None]
    if isinstance(args.pin, list):
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            allowed = set(args.pin)
        bad = [c for c in args.pin if c not in allowed]
        if bad:
            parser.error(f"--pin: CPU {', '.join(map(str, bad))} is not one this process may run on "
                         f"({', '.join(map(str, sorted(allowed)))})")
    if not args.rate_tolerance < 1:
        parser.error("--rate-tolerance must be below 1")
    for size in args.packet_sizes:
        try:
            Traffic(args.heap_size, size, args.heaps, args.flavour, args.channels).check()
        except ValueError as exc:
            parser.error(str(exc))
    if args.ref_venv is None:
        from spead2.tools import reference as _reference

        args.ref_venv = os.environ.get("SPEAD2_BENCH_REF_VENV") or _reference.default_venv()
    if args.ibv_endpoint and not args.ibv_interface:
        parser.error("--ibv-endpoint needs --ibv-interface (the emulated device has its own endpoint)")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib (pip install 'spead2[bench]' or pip install matplotlib)")
        if not args.plot.lower().endswith(".png"):
            parser.error("--plot FILE must end in .png")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker.main()
    if args.sender:
        return sender.main()
    _finish_args(parser, args)
    progress = Progress(sys.stderr.isatty())
    try:
        report = run_all(args, progress)
    except BenchError as exc:
        progress.note(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress.note("interrupted")
        return 130
    table = format_table(report)
    if args.json == "-":
        print(table, file=sys.stderr)
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
    if args.plot:
        plot(report, args.plot)
    failed = any(r[impl].get("failed") for r in report["results"] for impl in ("ours", "reference") if impl in r)
    return 1 if failed else 0
