"""Running every measurement of a benchmark (:func:`run_all`): traffic by
traffic, transport by transport, round by round, each receiver (plain
stream, groups) ours then the reference; combining the rounds and taking
the ratios ours / reference and group / plain stream.  The result is the
report (a JSON-able dictionary, :data:`SCHEMA_VERSION`)."""

from __future__ import annotations

import os
import platform
import re
import sys
import time

from spead2.tools.reference import VERSION as REF_VERSION

from .context import Context, Implementation, clean_ref_env, ours_env, reference_python
from .report import streams_text
from .session import BenchError, Session
from .traffic import Traffic
from .transports import TRANSPORTS, rate_search

SCHEMA_VERSION = 2

def machine_info():
    virtual = False
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        virtual = bool(re.search(r"^flags\s*:.*\bhypervisor\b", text, re.M))
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            model = m.group(1).strip()
    except OSError:
        pass
    cpus = os.cpu_count() or 1
    kind = "virtual machine" if virtual else "machine"
    return {"cpus": cpus, "virtual": virtual, "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "description": f"{cpus}-core {kind}"}


def _measure(ctx, transport, impl, traffic, streams=None, search=True):
    """Measurement plus (for live transports, with ``search``) the lossless
    rate, or an n/a entry."""
    args = ctx.args
    reason = transport.available(impl, streams)
    if reason:
        return {"available": False, "reason": reason}
    ctx.step += 1
    what = f"{transport.label} [{impl.name}, {streams_text(streams)}]"
    ctx.progress(f"[{ctx.step}/{ctx.total}] {what} {traffic.packet_size} B: measuring")
    try:
        result = transport.run(impl, traffic, streams=streams)
        result["available"] = True
        result["reason"] = None
        if transport.live:
            result["lossless"] = None
            if args.rate_search and search:
                lossless = rate_search(transport, impl, traffic, result, args, ctx.progress, streams=streams)
                lossless["payload_gbps"] = (lossless["packets_per_s"] * traffic.payload_bytes_per_packet()
                                            * 8 / 1e9)
                result["lossless"] = lossless
        if result.get("error"):
            raise BenchError(result["error"])
        return result
    except BenchError as exc:
        ctx.progress.note(f"{what} failed: {exc}")
        ctx.close_session(impl, transport)
        return {"available": False, "reason": f"failed: {exc}", "failed": True}


def _copy_limit(ctx, session, traffic):
    """The copy limit of ``traffic`` (:mod:`.copylimit`), measured by our
    worker ``session``, or None if that failed."""
    ctx.progress(f"{traffic.packet_size} B: measuring the copy limit")
    req = {"op": "copy_limit", "traffic": traffic.as_dict(), "files": ctx.traffic_files(traffic),
           "reps": ctx.args.reps}
    try:
        return session.request(req, timeout=60 + traffic.n_packets * 1e-5 * ctx.args.reps)
    except BenchError as exc:
        ctx.progress.note(f"the copy limit could not be measured: {exc}")
        return None


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


#: Ratios (ours / reference) in the report.
RATIO_KEYS = ("packets_per_s", "payload_gbps", "cpu_s_per_mpkt", "receiver_cpu_s_per_mpkt")
#: What each round keeps, with --rounds.
ROUND_KEYS = ("seconds", "packets_per_s", "payload_gbps", "cpu_seconds", "cpu_s_per_mpkt",
              "receiver_cpu_seconds", "receiver_cpu_s_per_mpkt", "heaps_sent", "heaps_complete", "heaps_lost",
              "receiver_context_switches")
#: Their spread (lowest, median, highest), with --rounds.
SPREAD_KEYS = ("packets_per_s", "payload_gbps", "cpu_s_per_mpkt", "receiver_cpu_s_per_mpkt")


def _ratios(ours, ref):
    if not (ours.get("available") and ref.get("available")):
        return None
    out = {key: _ratio(ours.get(key), ref.get(key)) for key in RATIO_KEYS}
    if ours.get("lossless") and ref.get("lossless"):
        out["lossless_packets_per_s"] = _ratio(ours["lossless"]["packets_per_s"],
                                               ref["lossless"]["packets_per_s"])
    return out


def _spread(values):
    """{"min", "median", "max"} of the values that are not None (None if none are)."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return {"min": values[0], "median": median, "max": values[-1]}


def _combine_rounds(ms):
    """One measurement from the rounds of one row: the round with the median
    packet rate, plus every round's numbers ("rounds") and their spread."""
    if len(ms) == 1:
        return ms[0]
    for m in ms:
        if not m.get("available"):
            return m  # a failure (or n/a) in any round decides
    order = sorted(range(len(ms)), key=lambda i: ms[i]["packets_per_s"])
    pick = order[(len(ms) - 1) // 2]
    out = dict(ms[pick])
    out["round"] = pick
    out["rounds"] = []
    for m in ms:
        r = {k: m.get(k) for k in ROUND_KEYS}
        if "members" in m:
            r["member_cpu_seconds"] = [x["cpu_seconds"] for x in m["members"]]
            r["member_heaps_lost"] = [x["heaps_lost"] for x in m["members"]]
        out["rounds"].append(r)
    out["spread"] = {k: _spread([m.get(k) for m in ms]) for k in SPREAD_KEYS}
    out["heaps_lost_all_rounds"] = sum(m["heaps_lost"] for m in ms)
    if ms[0].get("lossless") is not None:
        out["lossless"] = ms[0]["lossless"]  # the rate search runs in the first round only
    return out


def _round_ratios(ours, ref):
    """Ratios ours / reference, round by round (each pair measured one after
    the other); with several rounds, the median and the spread of them."""
    per_round = [_ratios(o, r) for o, r in zip(ours, ref)]
    if not per_round or None in per_round:
        return None
    if len(per_round) == 1:
        return per_round[0]
    out = {}
    spread = {}
    for key in RATIO_KEYS:
        spread[key] = _spread([r.get(key) for r in per_round])
        out[key] = spread[key]["median"] if spread[key] else None
    if "lossless_packets_per_s" in per_round[0]:
        out["lossless_packets_per_s"] = per_round[0]["lossless_packets_per_s"]
    out["spread"] = spread
    out["rounds"] = per_round
    return out


def _group_overhead(transport, traffic, per, impls):
    """Each group against the plain ChunkRingStream on the same traffic, round by round."""
    out = []
    if None not in per:
        return out
    for impl in impls:
        base = per[None][impl.name]
        for streams, by_impl in per.items():
            if streams is None:
                continue
            group = by_impl[impl.name]
            if not all(m.get("available") for m in base + group):
                continue
            entry = {"transport": transport.name, "label": transport.label, "packet_size": traffic.packet_size,
                     "impl": impl.name, "streams": streams, "rounds": len(group)}
            for key, name in (("receiver_cpu_s_per_mpkt", "receiver_cpu_per_packet"),
                              ("cpu_s_per_mpkt", "cpu_per_packet"), ("packets_per_s", "packets_per_s")):
                entry[name] = _spread([_ratio(g.get(key), b.get(key)) for g, b in zip(group, base)])
            out.append(entry)
    return out


def run_all(args, progress):
    ctx = Context(args, progress)
    impls = [Implementation("ours", sys.executable, ours_env())]
    reference = None
    copy_session = None
    try:
        if args.compare_reference:
            python = args.ref_python or reference_python(args.ref_venv, progress)
            impls.append(Implementation("reference", python, clean_ref_env()))
        transports = [TRANSPORTS[name](ctx) for name in args.transports]
        # Hello from every implementation (through the cheapest worker).
        # Ours stays up to measure the copy limit.
        for impl in impls:
            progress(f"starting the {impl.name} worker")
            s = Session(impl.python, "worker", impl.env, ctx.tmp,
                        os.path.join(ctx.log_dir, f"{impl.name}-hello.log"))
            try:
                impl.info = s.request({"op": "hello"}, timeout=300)
            finally:
                if impl is impls[0]:
                    copy_session = s
                else:
                    s.close()
        ours_info = impls[0].info
        if len(impls) > 1:
            ref_info = impls[1].info
            reference = {"version": ref_info["version"], "file": ref_info["file"], "python": ref_info["python"]}
            if os.environ.get("SPEAD2_BENCH_ALLOW_ANY_REFERENCE") != "1":
                if ref_info["file"] == ours_info["file"]:
                    raise BenchError(f"the reference interpreter imports our spead2 ({ref_info['file']})")
                if ref_info["version"] != REF_VERSION:
                    raise BenchError(f"the reference interpreter has spead2 {ref_info['version']}, "
                                     f"not {REF_VERSION}")
        rows = []
        overhead = []
        scenarios = [Traffic(args.heap_size, p, args.heaps, args.flavour, args.channels)
                     for p in args.packet_sizes]
        ctx.total = len(scenarios) * len(transports) * len(impls) * len(args.stream_list) * args.rounds
        # Scenario by scenario (the traffic files of one at a time); the
        # workers stay up from one scenario to the next.  Within a transport:
        # round by round, each receiver (plain stream, groups) in turn, ours
        # then the reference, so that what is compared was measured close together.
        for traffic in scenarios:
            ctx.traffic_files(traffic)
            copy = _copy_limit(ctx, copy_session, traffic)
            for transport in transports:
                per = {s: {impl.name: [] for impl in impls} for s in args.stream_list}
                for rnd in range(args.rounds):
                    for streams in args.stream_list:
                        for impl in impls:
                            per[streams][impl.name].append(
                                _measure(ctx, transport, impl, traffic, streams, search=(rnd == 0)))
                for streams in args.stream_list:
                    row = {"transport": transport.name, "label": transport.label, "live": transport.live,
                           "packet_size": traffic.packet_size, "streams": streams, "traffic": traffic.as_dict()}
                    for impl in impls:
                        row[impl.name] = _combine_rounds(per[streams][impl.name])
                        if copy and row[impl.name].get("available"):
                            row[impl.name]["of_copy_limit"] = row[impl.name]["packets_per_s"] / copy["packets_per_s"]
                    row["copy_limit"] = copy
                    if len(impls) > 1:
                        row["ratio"] = _round_ratios(per[streams]["ours"], per[streams]["reference"])
                    rows.append(row)
                overhead.extend(_group_overhead(transport, traffic, per, impls))
            ctx.drop_traffic(traffic)
    finally:
        progress.clear()
        if copy_session is not None:
            copy_session.close()
        ctx.close()
    return {
        "tool": "spead2_bench",
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "spead2": {"version": ours_info["version"], "file": ours_info["file"], "python": sys.executable},
        "reference": reference,
        "config": {
            "heap_size": args.heap_size, "packet_sizes": args.packet_sizes, "heaps": scenarios[0].heaps,
            "flavour": f"SPEAD-64-{args.flavour}", "channels": args.channels,
            "transports": args.transports, "rate_search": args.rate_search, "rate_steps": args.rate_steps,
            "step_time": args.step_time, "rate_tolerance": args.rate_tolerance, "reps": args.reps,
            "quick": args.quick, "compare_reference": args.compare_reference,
            "ibv_interface": args.ibv_interface,
            "streams": args.stream_list, "rounds": args.rounds, "eviction_mode": args.eviction_mode,
            "pin": args.pin, "cpus": ours_info.get("cpus", []) if args.pin is True else (args.pin or []),
        },
        "results": rows,
        "group_overhead": overhead,
    }


