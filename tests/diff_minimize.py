"""Shrink a differing job of the differential test to a few packets.

    PYTHONPATH=/path/to/our/package python3 tests/diff_minimize.py inproc:123 [--tag stats.too_old_heaps]

Delta debugging over the job's packets (pcap: its frames), keeping every
candidate that still shows the given difference tags (default: all tags of
the original).  Candidates of one round run together in one process per side.
Prints the surviving packets decoded, and both sides' outputs.
"""

import argparse
import base64
import json
import struct

import diff_gen
import diff_harness as dh
import spead_builder as sb


def units_key(job):
    return "records" if job["transport"] == "pcap" else "packets"


def with_units(job, units, tag):
    new = dict(job)
    new[units_key(job)] = units
    new["key"] = f"{job['key']}#{tag}"
    return new


def describe(raw):
    """One line about a SPEAD packet."""
    if len(raw) < 8:
        return f"<{len(raw)} bytes: {raw.hex()}>"
    magic, version, idb, adb, _, n = struct.unpack(">BBBBHH", raw[:8])
    if magic != 0x53 or version != 4 or not idb or not adb or idb + adb != 8:
        return f"<bad header {raw[:8].hex()}, {len(raw)} bytes>"
    hab = adb * 8
    parts = []
    for i in range(n):
        if 8 + 8 * i + 8 > len(raw):
            parts.append("<items overflow>")
            break
        (ptr,) = struct.unpack(">Q", raw[8 + 8 * i:16 + 8 * i])
        imm = ptr >> 63
        item_id = (ptr >> hab) & ((1 << (63 - hab)) - 1)
        value = ptr & ((1 << hab) - 1)
        names = {1: "cnt", 2: "len", 3: "off", 4: "plen", 6: "ctrl", 0: "null", 5: "desc"}
        name = names.get(item_id, hex(item_id))
        parts.append(f"{name}{'=' if imm else '@'}{value}")
    payload = len(raw) - 8 - 8 * n
    return f"[64-{hab}] " + " ".join(parts) + f" | {payload} B"


def describe_unit(job, unit):
    if job["transport"] != "pcap":
        return describe(base64.b64decode(unit))
    data, orig = base64.b64decode(unit[0]), unit[1]
    off = 14 if job["link"] == 1 else 16
    eth = data[off - 2:off]
    if eth != b"\x08\x00" or len(data) < off + 28:
        return f"<frame ethertype {eth.hex()} {len(data)}/{orig} B>"
    ihl = (data[off] & 0xF) * 4
    proto = data[off + 9]
    frag = struct.unpack(">H", data[off + 6:off + 8])[0]
    udp_len = struct.unpack(">H", data[off + ihl + 4:off + ihl + 6])[0]
    payload = data[off + ihl + 8:off + ihl + udp_len]
    note = "" if (proto == 17 and not frag & 0x3FFF and len(data) == orig) else \
        f" (proto {proto} frag {frag:#x} cap {len(data)}/{orig})"
    return f"udp{note} " + describe(payload)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("key")
    ap.add_argument("--tag", action="append", default=[])
    args = ap.parse_args()
    transport, seed = args.key.split(":")
    job = diff_gen.generate(int(seed), transport)
    so = dh.compile_place()
    ref = dh.reference_side()
    diffs, _, _ = dh.differential([job], so, ref)
    if job["key"] not in diffs:
        print("no difference")
        return
    tags0 = set(diffs[job["key"]][0])
    target = set(args.tag) or tags0
    print("original tags:", sorted(tags0), "target:", sorted(target))
    units = list(job[units_key(job)])
    n = 2
    counter = 0
    while len(units) >= 2:
        size = max(1, len(units) // n)
        chunks = [units[i:i + size] for i in range(0, len(units), size)]
        cands = []
        for i in range(len(chunks)):
            cands.append(chunks[i])
            cands.append([u for j, c in enumerate(chunks) if j != i for u in c])
        jobs = []
        for c in cands:
            counter += 1
            jobs.append(with_units(job, c, counter))
        diffs, _, _ = dh.differential(jobs, so, ref)
        found = None
        for j, c in zip(jobs, cands):
            if j["key"] in diffs and target <= set(diffs[j["key"]][0]) \
                    and not any(t.startswith("crash") for t in diffs[j["key"]][0]):
                if found is None or len(c) < len(found):
                    found = c
        if found is not None:
            units = found
            n = max(2, n - 1) if len(found) > size else 2
        elif n >= len(units):
            break
        else:
            n = min(len(units), 2 * n)
    final = with_units(job, units, "min")
    ours = dh.ours_side()
    ours.args.append("--full")
    ref.args.append("--full")
    res = dh.run_jobs([final], [ours, ref], so)
    tags, details = dh.compare(final, res["ours"][final["key"]], res["ref"][final["key"]])
    print("config:", json.dumps({k: v for k, v in job.items()
                                 if k not in ("packets", "records", "features")}))
    print(f"{len(units)} units:")
    for u in units:
        print("  ", describe_unit(job, u))
    print("tags:", tags)
    print("\n".join(details))
    for name in ("ours", "ref"):
        r = res[name][final["key"]]
        print(f"--- {name} stats:", r.get("stats"))
        for c in r.get("chunks", []):
            if set(c["present"]) <= {"0"} and set(c["data"]) <= {"a", "5"} and not c.get("extra", "").strip("a5"):
                continue
            print(f"    chunk {c['id']} present={c['present']} extra={c.get('extra')} data={c['data'][:200]}")


if __name__ == "__main__":
    main()
