"""Built-in placements (spead2.recv.place) against the numba callbacks of
spead2_recv with the same parameters: the same traffic must give the same
chunks (IDs, present, data, extra) and the same statistics."""

import hashlib
import json
import pathlib
import random

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.recv.place

pytest.importorskip("numba")
pytest.importorskip("scipy")
from spead2.tools.recv import Layout, make_place_callback  # noqa: E402
from spead_builder import heap_packets  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"


def receive(source, items, place, heaps_per_chunk, heap_size, kind):
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=8, allow_out_of_order=True),
        spead2.recv.ChunkStreamConfig(items=items, max_chunks=3, place=place, max_heap_extra=8),
        spead2.recv.ChunkRingbuffer(8), spead2.recv.ChunkRingbuffer(8))
    for _ in range(8):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(heaps_per_chunk, np.uint8),
                                                data=np.zeros(heaps_per_chunk * heap_size, np.uint8),
                                                extra=np.zeros(heaps_per_chunk, np.int64)))
    if kind == "pcap":
        stream.add_udp_pcap_file_reader(str(source))
    else:
        stream.add_buffer_reader(np.frombuffer(source, np.uint8))
    out = []
    for chunk in stream.data_ringbuffer:
        out.append((chunk.chunk_id, chunk.present.tolist(), hashlib.sha256(chunk.data.tobytes()).hexdigest(),
                    chunk.extra[chunk.present.astype(bool)].tolist()))
        chunk.data.fill(0)
        chunk.extra.fill(0)
        stream.add_free_chunk(chunk)
    stream.stop()
    stats = stream.stats
    return out, {k: stats[k] for k in stats.keys()}


def layout_pair(layout, extra=True):
    numba_place = make_place_callback(layout)
    if layout.place == "cnt":
        builtin = spead2.recv.place.heap_counter(heap_size=layout.heap_size, heaps_per_chunk=layout.heaps_per_chunk,
                                                 cnt_first=layout.cnt_first, cnt_step=layout.cnt_step, extra=extra)
    else:
        builtin = spead2.recv.place.timestamp_channel(
            heap_size=layout.heap_size, channels=layout.channels, channel_step=layout.channel_step,
            timestamp_step=layout.timestamp_step, timestamps_per_chunk=layout.timestamps_per_chunk,
            first_timestamp=layout.first_timestamp, timestamp_id=layout.timestamp_id,
            channel_id=layout.channel_id, extra=extra)
    assert builtin.items == layout.items
    assert builtin.heaps_per_chunk == layout.heaps_per_chunk
    return numba_place, builtin


@pytest.mark.parametrize("capture", sorted(p.name for p in DATA.glob("*.pcap*")))
def test_captures_match_numba(capture):
    manifest = json.loads((DATA / (capture.rsplit(".", 1)[0] + ".json")).read_text())
    heaps = manifest["heaps"]
    ts = sorted({h["timestamp"] for h in heaps})
    ch = sorted({h["frequency"] for h in heaps})
    layout = Layout(place="timestamp", heap_size=manifest["heap_payload_bytes"], heaps_per_chunk=2 * len(ch),
                    channels=len(ch), channel_step=ch[1] - ch[0], timestamp_step=ts[1] - ts[0],
                    first_timestamp=ts[0])
    numba_place, builtin = layout_pair(layout)
    args = (DATA / capture, layout.items, None, layout.heaps_per_chunk, layout.heap_size, "pcap")
    want = receive(*args[:2], numba_place, *args[3:])
    got = receive(*args[:2], builtin, *args[3:])
    assert got == want
    assert sum(sum(p) for _, p, _, _ in got[0]) == len(heaps)


def random_traffic(rng, layout):
    """Heaps with keys on and off the layout's grid, wrong lengths, in and out of order."""
    packets = []
    for i in range(400):
        heap_size = layout.heap_size if rng.random() > 0.05 else layout.heap_size // 2
        if layout.place == "cnt":
            cnt = layout.cnt_first + rng.randrange(-3, 200) * layout.cnt_step + (rng.random() < 0.1)
            if cnt < 1:
                continue
            imm = []
        else:
            cnt = i + 1
            t = rng.randrange(-2, 60)
            ts = layout.first_timestamp + t * layout.timestamp_step + (rng.randrange(layout.timestamp_step)
                                                                       if rng.random() < 0.2 else 0)
            c = rng.randrange(-1, layout.channels + 2)
            chan = c * layout.channel_step + (1 if rng.random() < 0.1 else 0)
            if ts < 0 or chan < 0:
                continue
            imm = [(layout.timestamp_id, ts), (layout.channel_id, chan)]
        payload = bytes(rng.randrange(256) for _ in range(8)) * (heap_size // 8)
        pkts = heap_packets(cnt, payload, rng.choice([heap_size, heap_size // 4]), imm)
        if rng.random() < 0.2:
            rng.shuffle(pkts)
        packets.extend(pkts)
    return b"".join(packets)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["cnt", "timestamp"])
def test_random_traffic_matches_numba(kind, seed):
    rng = random.Random(f"{kind}:{seed}")
    if kind == "cnt":
        layout = Layout(place="cnt", heap_size=256, heaps_per_chunk=rng.choice([4, 8]),
                        cnt_first=rng.choice([1, 7]), cnt_step=rng.choice([1, 2, 3]))
    else:
        channels = rng.choice([2, 4])
        layout = Layout(place="timestamp", heap_size=256, heaps_per_chunk=channels * rng.choice([1, 2, 3]),
                        channels=channels, channel_step=rng.choice([1, 64]), timestamp_step=rng.choice([1, 1024]),
                        first_timestamp=rng.choice([0, 5000]))
    numba_place, builtin = layout_pair(layout)
    traffic = random_traffic(rng, layout)
    want = receive(traffic, layout.items, numba_place, layout.heaps_per_chunk, layout.heap_size, "buffer")
    got = receive(traffic, layout.items, builtin, layout.heaps_per_chunk, layout.heap_size, "buffer")
    assert got == want
    assert any(any(p) for _, p, _, _ in got[0])


def test_bias_and_no_extra():
    p = spead2.recv.place.heap_counter(heap_size=64, heaps_per_chunk=2, chunk_id_bias=2**63 - 5)
    assert p.max_heap_extra == 0
    traffic = b"".join(pkt for cnt in range(1, 9) for pkt in heap_packets(cnt, bytes(64), 64))
    chunks, stats = receive(traffic, p.items, p, 2, 64, "buffer")
    ids = [c[0] for c in chunks if any(c[1])]
    assert ids == [2**63 - 5 + i for i in range(4)]
    assert stats["rejected_heaps"] == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(heap_size=0, heaps_per_chunk=1), "heap_size"),
    (dict(heap_size=8, heaps_per_chunk=0), "heaps_per_chunk"),
    (dict(heap_size=8, heaps_per_chunk=1, cnt_step=0), "cnt_step"),
    (dict(heap_size=8, heaps_per_chunk=1, cnt_first=-1), "cnt_first"),
])
def test_bad_counter_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spead2.recv.place.heap_counter(**kwargs)


def test_bad_timestamp_parameters():
    with pytest.raises(ValueError, match="channel_step"):
        spead2.recv.place.timestamp_channel(heap_size=8, channels=2, channel_step=0, timestamp_step=1)
    with pytest.raises(TypeError):
        spead2.recv.place.timestamp_channel(8, 2, 1, 1)


def test_placement_is_accepted_and_kept():
    p = spead2.recv.place.heap_counter(heap_size=64, heaps_per_chunk=4)
    config = spead2.recv.ChunkStreamConfig(items=p.items, place=p)
    assert config.place is p
    assert "heap_counter" in repr(p)
