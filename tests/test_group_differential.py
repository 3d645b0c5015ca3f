"""Chunk stream groups against the reference: the same traffic, split over
the members of a LOSSLESS group, through our package and the reference's.

LOSSLESS makes the result independent of thread timing: every chunk that
received data and every member's statistics must be equal (which member
allocated a chunk, hence its stream_id, depends on timing and is not
compared).  Seeded random scenarios: 1-4 members, group and member windows,
silent members, lost packets, packets out of order within a heap, heaps
shared out at random or round robin, chunk IDs near 2^63.
"""

import base64
import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

import refvenv
from spead_builder import heap_packets

pytestmark = pytest.mark.timeout(300)

HERE = pathlib.Path(__file__).resolve().parent
N_SEEDS = int(os.environ.get("SPEAD2_GROUP_DIFF_SEEDS", "200"))
HEAP = 1024
PARAMS = dict(idx_pos=0, idx_len=1, idx_plen=-1, idx_cnt=-1, idx_extra=-1, n_items=2, flags_per_slot=1,
              extra_total=0, extra_per_heap=0, extra_size=0, presence_payload=0, reject_mod=0, reject_rem=0,
              oor_mod=0, oor_rem=0, overflow_oor=0, max_len=-1, pos_from_cnt=0, stat_counter=-1, stat_max=-1,
              stat_reject=-1, stat_poke=-1, stat_calls=-1)


def make_job(seed):
    rng = random.Random(f"group:{seed}")
    n = rng.randint(1, 4)
    group_max = rng.randint(1, 6)
    hpc = rng.choice([2, 4, 8])
    n_heaps = rng.randint(5, 12) * hpc
    bias = rng.choice([0, 0, 2**63 - 1 - n_heaps // hpc])
    silent = {rng.randrange(n)} if n > 1 and rng.random() < 0.3 else set()
    members = [{"max_heaps": rng.randint(1, 8), "out_of_order": rng.random() < 0.5,
                "max_chunks": rng.randint(1, group_max), "packets": []} for _ in range(n)]
    round_robin = rng.random() < 0.5
    for pos in range(n_heaps):
        if rng.random() < 0.05:
            continue   # a lost heap
        m = pos % n if round_robin else rng.randrange(n)
        if m in silent:
            continue
        payload = bytes((pos * 7 + i) & 0xFF for i in range(HEAP))
        pkts = heap_packets(pos + 1, payload, rng.choice([256, 512, 1024]), [(0x1000, pos)])
        if rng.random() < 0.1 and len(pkts) > 1:
            del pkts[rng.randrange(len(pkts))]   # an incomplete heap
        if rng.random() < 0.2:
            rng.shuffle(pkts)   # only out-of-order members will take these
        members[m]["packets"].extend(base64.b64encode(p).decode() for p in pkts)
    params = dict(PARAMS, heaps_per_chunk=hpc, slot_size=HEAP, bias=bias, data_size=hpc * HEAP, present_size=hpc)
    return {"key": seed, "group_max_chunks": group_max, "members": members,
            "items": [0x1000, 2], "params": params}


def run_side(python, env, cwd, jobs_path, so):
    proc = subprocess.run([python, str(HERE / "group_diff_runner.py"), str(jobs_path), so],
                          capture_output=True, text=True, timeout=280, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["key"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.strip())}


def test_group_matches_reference(tmp_path):
    if refvenv.skip_reason():
        pytest.skip(refvenv.skip_reason())
    import diff_harness

    so = diff_harness.compile_place()
    jobs = [make_job(seed) for seed in range(N_SEEDS)]
    jobs_path = tmp_path / "jobs.jsonl"
    jobs_path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    ours = run_side(sys.executable, dict(os.environ), str(HERE), jobs_path, so)
    ref = run_side(refvenv.reference_python(), refvenv.clean_env(), "/", jobs_path, so)
    differ = []
    for job in jobs:
        o, r = ours[job["key"]], ref[job["key"]]
        if o["chunks"] != r["chunks"]:
            differ.append((job["key"], "chunks", o["chunks"][:3], r["chunks"][:3]))
        for i, (so_, sr) in enumerate(zip(o["stats"], r["stats"])):
            common = {k: (so_[k], sr[k]) for k in sr if k in so_ and so_[k] != sr[k]}
            if common:
                differ.append((job["key"], f"member {i} stats", common))
    assert not differ, "\n".join(map(str, differ[:10]))
    # The comparison covered real traffic (not only empty groups).
    assert sum(len(r["chunks"]) for r in ref.values()) > 10 * N_SEEDS // 4
    assert sum(len(j["members"]) > 1 for j in jobs) > N_SEEDS // 2
