#!/usr/bin/env python3
"""Instructions per packet of the chunk receive path, counted by callgrind.

Timing differences of a few per cent cannot be resolved on a shared machine
(best-of-N runs of the same build differ by 5 % or more there). Instruction
counts do not depend on the load, so this compares builds by the work their
receive path does per packet: a buffer reader feeding a ChunkRingStream with a
C place callback (heap counter -> chunk and heap index), for the three traffic
shapes of bench_chunk.py. Only the reader's thread is counted, from the start
of ``buffer_reader::run`` to its end (decode, placement, copies, chunk
hand-over); the per-packet figure is the difference between two traffic sizes
divided by the difference in packets, so set-up costs cancel.

    python3 bench/bench_instructions.py --python A=/path/to/python-or-wrapper --python B=...

Each ``--python`` is an interpreter (or a wrapper script that sets PYTHONPATH
to a build) whose ``spead2`` is measured. Needs valgrind. Cache misses are not
counted: this measures the work added by a change (for example the
observability of issue 18), not the speed of memory.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

CASES = {
    "1k": dict(heap_size=1024, packet_payload=1024, desc="1 KiB single-packet heaps"),
    "8k": dict(heap_size=8192, packet_payload=8192, desc="8 KiB single-packet heaps"),
    "64k": dict(heap_size=65536, packet_payload=1424, desc="64 KiB heaps in 1472-byte packets"),
}

PLACE_C = r"""
#include <stddef.h>
#include <stdint.h>
struct chunk_place_data {
    const uint8_t *packet; size_t packet_size; const int64_t *items; int64_t chunk_id;
    size_t heap_index; size_t heap_offset; uint64_t *batch_stats;
};
/* items: [HEAP_CNT, HEAP_LENGTH]; 64 heaps per chunk. */
void place(void *data, size_t size, void *user)
{
    struct chunk_place_data *d = data;
    int64_t cnt = d->items[0];
    int64_t heap_size = *(const int64_t *) user;
    if (cnt < 0 || d->items[1] != heap_size) return;
    d->chunk_id = cnt / 64;
    d->heap_index = cnt % 64;
    d->heap_offset = d->heap_index * heap_size;
}
"""

WORKER = r"""
import ctypes, struct, sys
import numpy as np
import spead2, spead2.recv

lib_path, heap_size, payload, n_heaps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def packets():
    out = bytearray()
    for cnt in range(n_heaps):
        for off in range(0, heap_size, payload):
            n = min(payload, heap_size - off)
            out += struct.pack(">BBBBHH", 0x53, 4, 2, 6, 0, 4)
            for item_id, value in ((1, cnt), (2, heap_size), (3, off), (4, n)):
                out += struct.pack(">Q", (1 << 63) | (item_id << 48) | value)
            out += bytes([cnt % 251]) * n
    return bytes(out)

data = packets()
lib = ctypes.CDLL(lib_path)
user = ctypes.c_int64(heap_size)
PyCapsule_New = ctypes.pythonapi.PyCapsule_New
PyCapsule_New.restype = ctypes.py_object
PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
PyCapsule_SetContext = ctypes.pythonapi.PyCapsule_SetContext
PyCapsule_SetContext.argtypes = [ctypes.py_object, ctypes.c_void_p]
name = ctypes.create_string_buffer(b"void (void *, size_t, void *)")  # must outlive the capsule
capsule = PyCapsule_New(ctypes.cast(lib.place, ctypes.c_void_p).value, ctypes.addressof(name), None)
PyCapsule_SetContext(capsule, ctypes.addressof(user))
import scipy
place = scipy.LowLevelCallable(capsule)
n_chunks = 8
data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
stream = spead2.recv.ChunkRingStream(
    spead2.ThreadPool(1), spead2.recv.StreamConfig(max_heaps=4),
    spead2.recv.ChunkStreamConfig(items=[spead2.HEAP_CNT_ID, spead2.HEAP_LENGTH_ID], max_chunks=4, place=place),
    data_ring, free_ring)
for _ in range(n_chunks):
    stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(64, np.uint8), data=np.zeros(64 * heap_size, np.uint8)))
stream.add_buffer_reader(data)
complete = 0
for chunk in data_ring:
    complete += int(chunk.present.sum())
    stream.add_free_chunk(chunk)
assert complete == n_heaps, (complete, n_heaps)
print("OK", spead2.__file__)
"""


def instructions(python, lib, case, n_heaps, tmpdir):
    out = os.path.join(tmpdir, "callgrind.out")
    script = os.path.join(tmpdir, "worker.py")
    with open(script, "w") as f:
        f.write(WORKER)
    c = CASES[case]
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--trace-children=yes",
           "--toggle-collect=*buffer_reader::run*", f"--callgrind-out-file={out}",
           python, script, lib, str(c["heap_size"]), str(c["packet_payload"]), str(n_heaps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmpdir)
    if proc.returncode != 0 or "OK" not in proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    total = 0
    with open(out) as f:
        for line in f:
            m = re.match(r"(summary|totals):\s+(\d+)", line)
            if m:
                total = max(total, int(m.group(2)))
    os.unlink(out)
    return total, proc.stdout.split("OK", 1)[1].strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", required=True, metavar="LABEL=PATH",
                        help="an interpreter (or wrapper) whose spead2 is measured; repeat")
    parser.add_argument("--cases", default="1k,8k,64k")
    parser.add_argument("--heaps", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                        help="heaps in the two traffic sizes [per case: 64 KiB of payload x 16 / x 48]")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    pythons = [p.split("=", 1) for p in args.python]
    with tempfile.TemporaryDirectory() as tmpdir:
        src = os.path.join(tmpdir, "place.c")
        lib = os.path.join(tmpdir, "place.so")
        with open(src, "w") as f:
            f.write(PLACE_C)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", lib, src], check=True)
        results = []
        print(f"{'case':<5} " + " ".join(f"{label + ' instr/pkt':>18}" for label, _ in pythons)
              + ("  " + " ".join(f"{label + '/' + pythons[0][0]:>10}" for label, _ in pythons[1:])))
        for case in args.cases.split(","):
            c = CASES[case]
            pkts_per_heap = -(-c["heap_size"] // c["packet_payload"])
            if args.heaps:
                small, large = args.heaps
            else:
                small = max(64, (1 << 20) // c["heap_size"])
                large = 3 * small
            row = {"case": case, "desc": c["desc"], "heaps": [small, large]}
            per_packet = []
            for label, python in pythons:
                a, file_a = instructions(python, lib, case, small, tmpdir)
                b, _ = instructions(python, lib, case, large, tmpdir)
                value = (b - a) / ((large - small) * pkts_per_heap)
                row[label] = {"instructions_per_packet": value, "spead2": file_a}
                per_packet.append(value)
            results.append(row)
            print(f"{case:<5} " + " ".join(f"{v:18.1f}" for v in per_packet)
                  + "  " + " ".join(f"{v / per_packet[0]:10.4f}" for v in per_packet[1:]), flush=True)
        for label, _ in pythons:
            print(f"# {label}: {results[0][label]['spead2']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
