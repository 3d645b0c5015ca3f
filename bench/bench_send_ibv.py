#!/usr/bin/env python3
"""Packets/s sent by spead2.send.UdpIbvStream through the EMULATED ibverbs
device (tests/ibv_emulator or the one in the package).

The emulated NIC executes every work request on the sending thread (gather
through the memory regions, frame checks), and sends nothing anywhere (no
SPEAD2_EMU_SEND_WIRE), so these numbers measure the emulator as much as the
sender and say nothing about a real NIC; the reference cannot use the
emulated device, so there is no side-by-side ratio.  Useful to compare
versions of our sender with each other, e.g. copy versus memory regions.

    python bench/bench_send_ibv.py [--duration 2] [--json FILE]
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap

CASES = {
    "1k": dict(payload=1024, max_packet=1472),
    "64k": dict(payload=65536, max_packet=1472),
}

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import spead2, spead2.send
    payload, max_packet, duration, regions = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    data = np.ones(payload, np.uint8)
    cfg = spead2.send.UdpIbvConfig(endpoints=[("239.10.2.1", 7300)], interface_address="127.0.0.1",
                                   memory_regions=[data] if regions else [])
    stream = spead2.send.UdpIbvStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=max_packet), cfg)
    heap = spead2.send.Heap(spead2.Flavour(heap_address_bits=48))
    heap.add_item(spead2.Item(0x1000, "", "", shape=(payload,), dtype=np.uint8, value=data))
    for _ in range(50):
        stream.send_heap(heap)
    start_packets = stream._ibv_stats["packets"]
    heaps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        for _ in range(20):
            stream.send_heap(heap)
        heaps += 20
    elapsed = time.perf_counter() - start
    packets = stream._ibv_stats["packets"] - start_packets
    print(json.dumps({"packets_per_s": packets / elapsed, "heaps_per_s": heaps / elapsed,
                      "stats": stream._ibv_stats}))
    """
)


def emulator_library():
    from spead2.tools import ibv_emulator

    lib = ibv_emulator.library()
    if lib is None:
        sys.exit("bench_send_ibv: the emulated device is not available (build with the rdma-core headers)")
    return str(lib)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per case [%(default)s]")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    env = dict(os.environ)
    env["SPEAD2_IBV_LIBRARY_OVERRIDE"] = emulator_library()
    env["SPEAD2_EMU_INTERFACE"] = "127.0.0.1"
    for key in ("SPEAD2_EMU_STATS", "SPEAD2_EMU_SEND_WIRE", "SPEAD2_EMU_WIRE"):
        env.pop(key, None)
    results = {}
    print("UdpIbvStream on the EMULATED device (not a NIC): packets/s")
    for name, case in CASES.items():
        for regions in (False, True):
            label = f"{name} {'memory region (zero copy)' if regions else 'copied'}"
            proc = subprocess.run(
                [sys.executable, "-c", WORKER, str(case["payload"]), str(case["max_packet"]), str(args.duration),
                 "1" if regions else "0"],
                capture_output=True, text=True, env=env, timeout=120 + 2 * args.duration)
            if proc.returncode != 0:
                sys.exit(f"worker failed:\n{proc.stderr}")
            result = json.loads(proc.stdout.splitlines()[-1])
            results[label] = result
            print(f"  {label:34s} {result['packets_per_s']:12.0f} packets/s  {result['heaps_per_s']:10.0f} heaps/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
