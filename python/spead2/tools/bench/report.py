"""The report as a plain-text table (:func:`format_table`) and as a plot of
payload throughput against packet size (:func:`plot`, needs matplotlib)."""

from __future__ import annotations


def streams_text(streams):
    """How the receiver is made, for labels: "plain stream" (one ChunkRingStream) or "group of N"."""
    if streams is None:
        return "plain stream"
    return "group of 1 member" if streams == 1 else f"group of {streams} members"




def _fmt(x, digits=3):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if x < 1 else f"{x:.2f}"


def _lossless_text(m):
    ll = m.get("lossless")
    if not ll:
        return "-"
    text = _fmt(ll["payload_gbps"])
    return (">=" + text) if ll["sender_limited"] else text


def _ratio_text(ratio, key):
    """A ratio, with the lowest and highest round in brackets when there were several."""
    text = _fmt(ratio.get(key))
    spread = (ratio.get("spread") or {}).get(key)
    if spread and spread["min"] != spread["max"]:
        text += f" ({_fmt(spread['min'])}-{_fmt(spread['max'])})"
    return text


def _streams_cell(streams):
    return "plain" if streams is None else str(streams)


def _member_cpu_text(m):
    members = m.get("members")
    if not members:
        return "-"
    return "/".join("-" if x["cpu_seconds"] is None else f"{x['cpu_seconds'] * 1e3:.0f}" for x in members)


def format_table(report):
    """The results as a plain-text table."""
    compare = report["reference"] is not None
    groups = any(r.get("streams") is not None for r in report["results"])
    cfg = report["config"]
    rounds = cfg.get("rounds", 1)
    copy = any(r.get("copy_limit") for r in report["results"])
    head = ["transport", "packet"]
    if groups:
        head.append("streams")
    head += ["Mpkt/s", "Gb/s", "CPU s/Mpkt"]
    if groups:
        head += ["rx CPU s/Mpkt", "member CPU ms"]
    head += ["heaps ok/sent", "lossless Gb/s"]
    if copy:
        head += ["copy Mpkt/s", "of copy"]
    if compare:
        head += ["ref Mpkt/s", "x", "ref CPU", "x", "ref lossless", "x"] + (["ref of copy"] if copy else [])
    rows = []
    notes = []
    for r in report["results"]:
        o = r["ours"]
        what = r["label"] if not groups else f"{r['label']}, {streams_text(r.get('streams'))}"
        line = [r["label"], str(r["packet_size"])]
        if groups:
            line.append(_streams_cell(r.get("streams")))
        if o["available"]:
            line += [_fmt(o["packets_per_s"] / 1e6), _fmt(o["payload_gbps"]), _fmt(o["cpu_s_per_mpkt"])]
            if groups:
                line += [_fmt(o.get("receiver_cpu_s_per_mpkt")), _member_cpu_text(o)]
            line += [f"{o['heaps_complete']}/{o['heaps_sent']}", _lossless_text(o)]
        else:
            line += ["n/a", "", ""] + (["", ""] if groups else []) + ["", ""]
            notes.append(f"{what}: {o['reason']}")
        if copy:
            limit = r.get("copy_limit")
            line += [_fmt(limit["packets_per_s"] / 1e6) if limit else "-", _fmt(o.get("of_copy_limit"))]
        if compare:
            f = r["reference"]
            ratio = r.get("ratio") or {}
            if f["available"]:
                line += [_fmt(f["packets_per_s"] / 1e6), _ratio_text(ratio, "packets_per_s"),
                         _fmt(f["cpu_s_per_mpkt"]), _ratio_text(ratio, "cpu_s_per_mpkt"),
                         _lossless_text(f), _fmt(ratio.get("lossless_packets_per_s"))]
                if copy:
                    line.append(_fmt(f.get("of_copy_limit")))
            else:
                line += ["n/a", "", "", "", "", ""] + ([""] if copy else [])
                notes.append(f"reference {what}: {f['reason']}")
        rows.append(line)
    out = []
    out.append(f"spead2_bench: {cfg['heap_size']}-byte heaps, {cfg['flavour']}, {cfg['heaps']} heaps per run, "
               f"on a {report['machine']['description']}")
    if groups:
        cpus = cfg.get("cpus") or []
        if not cpus:
            pin = "threads not pinned"
        elif len(cpus) == 1:
            pin = f"every thread pinned to CPU {cpus[0]}"
        else:
            pin = f"stream i's thread pinned to CPUs {','.join(map(str, cpus))} in turn (i mod {len(cpus)})"
        out.append(f"streams: plain = one ChunkRingStream, N = a ChunkStreamRingGroup of N members "
                   f"({cfg.get('eviction_mode', 'lossless').upper()}), heap i to member i mod N; "
                   f"each on a ThreadPool(1), {pin}")
    out.extend(_table(head, rows))
    if rounds > 1:
        out.append(f"{rounds} rounds (ours and the reference taking turns): values from the round with the "
                   "median Mpkt/s; x = median of the per-round ratios (lowest-highest)")
    if compare:
        out.append("x = ours / reference (Mpkt/s and lossless: higher is better; CPU: lower is better)")
    out.append("Gb/s = heap payload; lossless = highest rate without loss found by the rate search "
               "(>=: the sender's limit)")
    if copy:
        out.append("copy = the copy limit: the packet rate if copying the heap payload into a ring of chunks "
                   "were the receiver's only work (numpy, same run); of copy = Mpkt/s / copy")
    if groups:
        out.append("CPU = the whole receiving process; rx CPU = the streams' own threads only; "
                   "member CPU = each member's thread, in ms")
    for n in dict.fromkeys(notes):
        out.append("n/a: " + n)
    overhead = report.get("group_overhead") or []
    if overhead:
        out.append("")
        out.append("group overhead: each group / the plain ChunkRingStream on the same traffic "
                   "(median of the per-round ratios (lowest-highest); CPU: lower is better)")
        head = ["transport", "packet", "spead2", "streams", "rx CPU/pkt", "CPU/pkt", "Mpkt/s"]
        rows = []
        for e in overhead:
            rows.append([e["label"], str(e["packet_size"]), e["impl"], str(e["streams"])]
                        + [_ratio_text({"v": (e[k] or {}).get("median"), "spread": {"v": e[k]}}, "v")
                           for k in ("receiver_cpu_per_packet", "cpu_per_packet", "packets_per_s")])
        out.extend(_table(head, rows))
    return "\n".join(out)


def _table(head, rows):
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt_row(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt_row(head), "  ".join("-" * w for w in widths)] + [fmt_row(row) for row in rows]


def plot(report, filename):
    """Payload throughput against packet size, one line per transport."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    # One line per transport and receiver (plain stream or group of N).
    groups = any(r.get("streams") is not None for r in report["results"])
    lines = list(dict.fromkeys((r["label"], r.get("streams")) for r in report["results"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    impls = [("ours", "-", "o")] + ([("reference", "--", "s")] if report["reference"] else [])
    sizes = set()
    for i, (label, streams) in enumerate(lines):
        colour = colours[i % len(colours)]
        for impl, style, marker in impls:
            rows = sorted((r for r in report["results"] if r["label"] == label and r.get("streams") == streams
                           and r[impl].get("available")),
                          key=lambda r: r["packet_size"])
            if not rows:
                continue
            sizes.update(r["packet_size"] for r in rows)
            line_label = f"{label}, {streams_text(streams)}" if groups else label
            name = line_label if impl == "ours" else f"{line_label}, reference {report['reference']['version']}"
            ax.plot([r["packet_size"] for r in rows], [r[impl]["payload_gbps"] for r in rows], style,
                    marker=marker, color=colour, label=name)
            lossless = [(r["packet_size"], r[impl]["lossless"]["payload_gbps"]) for r in rows
                        if r[impl].get("lossless")]
            if lossless:
                ax.plot([p for p, _ in lossless], [g for _, g in lossless], ":", marker=marker,
                        markerfacecolor="none", color=colour, label=f"{name}: highest lossless rate")
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([str(s) for s in sorted(sizes)])
    values = [line.get_ydata() for line in ax.get_lines()]
    values = [v for ys in values for v in ys if v > 0]
    if values and max(values) > 20 * min(values):
        ax.set_yscale("log")  # memory and network transports differ by orders of magnitude
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("packet size (bytes)")
    ax.set_ylabel("payload throughput (Gb/s)")
    cfg = report["config"]
    ax.set_title(f"spead2_bench: {cfg['heap_size']}-byte heaps, {cfg['flavour']}\n"
                 f"{report['machine']['description']} ({report['machine']['cpu_model']})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(filename)
    plt.close(fig)


