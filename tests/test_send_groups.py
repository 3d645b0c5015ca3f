"""Groups of heaps: send_heaps / async_send_heaps, HeapReference(List),
GroupMode, substreams, explicit cnts, the cnt sequence, max_heaps, and the
public PacketGenerator.

Wherever the reference spead2 4.5.1 has the behaviour, the same snippet runs
under it (tests/refvenv.py) and the output must be identical: the bytes of a
BytesStream, the datagrams each UDP destination receives, the packets of a
PacketGenerator, and the exception type and errno of each refused request.
"""

import asyncio
import json
import socket

import pytest

import spead2
import spead2.send
import spead2.send.asyncio
import spead2.recv

import refvenv

pytestmark = pytest.mark.timeout(120)

# Code run by both packages (ours in-process, the reference in its virtualenv).
COMMON = r"""
import json, socket, sys
import numpy as np
import spead2, spead2.send

tp = spead2.ThreadPool()
HR = spead2.send.HeapReference

def heap(n, bits=40, item_id=0x1000, repeat=False, immediates=0):
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, bits))
    for j in range(immediates):
        ig.add_item(0x2000 + j, 'i%d' % j, '', shape=(), format=[('u', 32)], value=j + 7)
    ig.add_item(item_id, 'a', '', shape=(n,), dtype=np.uint8, value=(np.arange(n) * 7 % 251).astype(np.uint8))
    h = ig.get_heap(descriptors='none', data='all')
    h.repeat_pointers = repeat
    return h

def outcome(call):
    try:
        return ['ok', call()]
    except Exception as exc:
        return [type(exc).__name__, getattr(exc, 'errno', None)]
"""

GROUPS = COMMON + r"""
result = []
for mode in (spead2.send.GroupMode.ROUND_ROBIN, spead2.send.GroupMode.SERIAL):
    for packet in (200, 1472, 100, 1500):
        for bits in (40, 48):
            s = spead2.send.BytesStream(tp, spead2.send.StreamConfig(max_packet_size=packet, max_heaps=8))
            s.set_cnt_sequence(5, 3)
            refs = [HR(heap(500, bits)), HR(heap(200, bits, repeat=True, immediates=2), cnt=99),
                    HR(heap(3000, bits, immediates=1)), HR(heap(1, bits)), HR(heap(777, bits), rate=0.0)]
            sizes = [s.send_heaps(refs, mode)]
            # A HeapReferenceList, sent whole, then sliced, then again (reuse).
            lst = spead2.send.HeapReferenceList(refs)
            sizes.append(s.send_heaps(lst, mode))
            sizes.append(s.send_heaps(lst[1:4], mode))
            sizes.append(s.send_heaps(lst[::2], mode))
            sizes.append(s.send_heap(heap(64, bits), substream_index=0))
            result.append([mode.name, packet, bits, sizes, s.getvalue().hex()])
print(json.dumps(result))
"""

ERRORS = COMMON + r"""
s = spead2.send.BytesStream(tp, spead2.send.StreamConfig(max_heaps=3))
h = heap(10)
SER = spead2.send.GroupMode.SERIAL
result = {
    'cnt_too_big': outcome(lambda: s.send_heap(h, cnt=1 << 40)),
    'cnt_max': outcome(lambda: s.send_heap(h, cnt=(1 << 40) - 1)),
    'cnt_48': outcome(lambda: s.send_heap(heap(10, 48), cnt=1 << 44)),
    'cnt_negative_is_auto': outcome(lambda: s.send_heap(h, cnt=-7)),
    'substream': outcome(lambda: s.send_heap(h, substream_index=1)),
    'substream_negative': outcome(lambda: s.send_heap(h, substream_index=-1)),
    'group_substream': outcome(lambda: s.send_heaps([HR(h), HR(h, substream_index=2)], SER)),
    'group_cnt': outcome(lambda: s.send_heaps([HR(h), HR(h, cnt=1 << 41)], SER)),
    'empty': outcome(lambda: s.send_heaps([], SER)),
    'empty_list': outcome(lambda: s.send_heaps(spead2.send.HeapReferenceList([]), SER)),
    'too_many': outcome(lambda: s.send_heaps([HR(h)] * 4, SER)),
    'max_heaps': outcome(lambda: s.send_heaps([HR(h)] * 3, SER)),
    'not_a_ref': outcome(lambda: s.send_heaps([h], SER)),
    'bad_mode': outcome(lambda: s.send_heaps([HR(h)], 0)),
    'step_zero': outcome(lambda: s.set_cnt_sequence(1, 0)),
    'step_negative': outcome(lambda: s.set_cnt_sequence(1, -1)),
    'next_negative': outcome(lambda: s.set_cnt_sequence(-1, 1)),
    'hr_substream_negative': outcome(lambda: HR(h, substream_index=-1)),
    'hr_positional': outcome(lambda: HR(h, 5)),
    'list_index': outcome(lambda: spead2.send.HeapReferenceList([HR(h)])[0]),
    'list_of_heaps': outcome(lambda: spead2.send.HeapReferenceList([h])),
}
# The sequence: refused groups leave it alone; automatic cnts wrap to the flavour.
s.set_cnt_sequence((1 << 40) - 1, 1)
outcome(lambda: s.send_heaps([HR(h), HR(h, substream_index=5)], SER))
s.send_heap(h)
s.send_heap(h)
s.send_heap(h, cnt=3)
s.send_heap(h)
ref = HR(h, cnt=4, substream_index=0, rate=2.5)
ref.cnt = 9
ref.substream_index = 0
ref.rate = -1.0
result['ref'] = [ref.heap is h, ref.cnt, ref.substream_index, ref.rate, outcome(lambda: setattr(ref, 'heap', h))[0]]
result['modes'] = [[m.name, m.value] for m in spead2.send.GroupMode]
result['rate_methods'] = [[m.name, m.value] for m in spead2.send.RateMethod]
result['tail'] = s.getvalue().hex()
print(json.dumps(result))
"""

PACKET_GENERATOR = COMMON + r"""
result = []
for size in (55, 56, 57, 64, 100, 200, 1472):
    for cnt in (1, 12345, (1 << 40) - 1):
        r = outcome(lambda: [bytes(p).hex() for p in spead2.send.PacketGenerator(heap(300, immediates=1), cnt, size)])
        result.append([size, cnt, r])
gen = spead2.send.PacketGenerator(heap(10), 1, 1472)
result.append(iter(gen) is gen)
result.append(outcome(lambda: spead2.send.PacketGenerator(heap(10), -1, 1472)))
print(json.dumps(result))
"""

# Heaps whose item pointers need several packets: the reference pads the
# payload (NULL item) so that each packet carrying pointers but the last
# also carries 8 bytes of payload.
MANY_POINTERS = COMMON + r"""
result = []
for packet in (80, 128, 200, 1472):
    for immediates in (0, 1, 5, 20, 38, 39, 40, 41, 100, 400):
        for n in (0, 1, 16, 32, 33, 500):
            for repeat in (False, True):
                s = spead2.send.BytesStream(tp, spead2.send.StreamConfig(max_packet_size=packet))
                ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
                for j in range(immediates):
                    ig.add_item(0x2000 + j, 'i%d' % j, '', shape=(), format=[('u', 32)], value=j)
                if n:
                    ig.add_item(0x1000, 'a', '', shape=(n,), dtype=np.uint8, value=np.full(n, 5, np.uint8))
                h = ig.get_heap(descriptors='none', data='all')
                h.repeat_pointers = repeat
                r = outcome(lambda: s.send_heap(h))
                result.append([packet, immediates, n, repeat, r, s.getvalue().hex()])
print(json.dumps(result))
"""

# Several UDP destinations; each one's datagrams, in order.
UDP_SUBSTREAMS = COMMON + r"""
socks = []
for _ in range(3):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(5)
    socks.append(sock)
config = spead2.send.StreamConfig(max_packet_size=1000, max_heaps=8, rate=50e6)
s = spead2.send.UdpStream(tp, [sock.getsockname() for sock in socks], config)
refs = [HR(heap(2500), substream_index=1), HR(heap(900, repeat=True, immediates=1), substream_index=0),
        HR(heap(4000), substream_index=1, cnt=77), HR(heap(10), substream_index=2)]
s.send_heaps(refs, getattr(spead2.send.GroupMode, sys.argv[1]))
s.send_heap(heap(30), substream_index=2)
result = []
# Datagrams per destination, from the heap sizes: 1; 3 + 5; 1 + 1.
for sock, n in zip(socks, [1, 8, 2]):
    result.append([sock.recv(65536).hex() for _ in range(n)])
print(json.dumps(result), flush=True)
if __name__ == '__main__':
    # Under the reference (python -c): leave at once; once, in a loaded full
    # run, the reference's process did not exit within 60 s after printing.
    import os
    os._exit(0)
"""


def run_ours(code, *args):
    """Run `code` in this interpreter with `args` as sys.argv[1:]; returns the JSON it printed."""
    import contextlib
    import io
    import sys

    out = io.StringIO()
    saved = sys.argv
    sys.argv = ["ours", *[str(a) for a in args]]
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
    finally:
        sys.argv = saved
    return json.loads(out.getvalue())


def run_ref(code, *args):
    return json.loads(refvenv.run_reference(code, *args, timeout=240).stdout)


def test_groups_bytes_match_reference():
    """ROUND_ROBIN / SERIAL interleaving, explicit and automatic cnts,
    HeapReferenceList reuse and slicing, repeat_pointers, packet sizes that
    are not multiples of 8: the same bytes as the reference's BytesStream."""
    ours = run_ours(GROUPS)
    ref = run_ref(GROUPS)
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref):
        assert mine[:4] == theirs[:4]
        assert mine[4] == theirs[4], f"bytes differ for {mine[:3]}"


def _packets(hex_bytes):
    """(header and item pointers, payload offset, payload) of each packet."""
    import struct

    data = bytes.fromhex(hex_bytes)
    pos = 0
    out = []
    while pos < len(data):
        n = struct.unpack(">Q", data[pos : pos + 8])[0] & 0xFFFF
        pointers = struct.unpack(f">{n}Q", data[pos + 8 : pos + 8 + 8 * n])
        offset, length = (p & ((1 << 48) - 1) for p in pointers[2:4])
        end = pos + 8 + 8 * n
        out.append((data[pos:end], offset, data[end : end + length]))
        pos = end + length
    return out


def test_many_item_pointers_match_reference():
    """Item pointers spread over several packets (many immediates, small
    packets, little or no payload): the same packets as the reference — the
    same padding, headers, item pointers and payload lengths.  The payload
    bytes are compared too, except where the reference pads: it garbles the
    last bytes of the items' data there (they arrive behind zero bytes), so
    ours must instead be the items' data followed by zero padding."""
    ours = run_ours(MANY_POINTERS)
    ref = run_ref(MANY_POINTERS)
    assert len(ours) == len(ref) == 480
    padded = 0
    for mine, theirs in zip(ours, ref):
        what = f"packet size, immediates, payload, repeat = {mine[:4]}"
        assert mine[:5] == theirs[:5], what
        if mine[4][0] != "ok":
            assert mine[5] == theirs[5] == "", what
            continue
        my_packets, their_packets = _packets(mine[5]), _packets(theirs[5])
        assert [(h, o, len(p)) for h, o, p in my_packets] == [(h, o, len(p)) for h, o, p in their_packets], what
        payload = b"".join(p for _, _, p in sorted(my_packets, key=lambda x: x[1]))
        n = mine[2] if mine[2] > 6 else 0  # up to 6 bytes travel as an immediate (SPEAD-64-48)
        assert payload[:n] == b"\x05" * n, what
        if len(payload) > max(n, 1):
            padded += 1
            assert payload[n:] == bytes(len(payload) - n), what
        else:
            assert mine[5] == theirs[5], what
    assert padded > 50


def test_many_item_pointers_decode_in_both_receivers():
    """Padded heaps (descriptors and many items over several small packets)
    decode to the same items, with intact values, in the reference's receiver
    and in ours."""
    import numpy as np

    import send_util

    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48))
    for j in range(45):
        ig.add_item(0x2000 + j, f"i{j}", "", shape=(), format=[("u", 32)], value=j * 3)
    ig.add_item(0x1000, "a", "", shape=(33,), dtype=np.uint8, value=np.arange(33, dtype=np.uint8) + 1)
    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=96))
    stream.send_heap(ig.get_heap(descriptors="all", data="all"))
    data = stream.getvalue()
    theirs = send_util.reference_decode(data, 48)
    assert len(theirs) == 1
    assert theirs[0]["a"]["value"] == list(range(1, 34))
    assert {theirs[0][f"i{j}"]["value"] for j in range(45)} == {j * 3 for j in range(45)}
    rs = spead2.recv.Stream(spead2.ThreadPool())
    rs.add_buffer_reader(data)
    heaps = list(rs)
    assert len(heaps) == 1
    got = spead2.ItemGroup()
    got.update(heaps[0])
    assert got["a"].value.tolist() == list(range(1, 34))
    assert [int(got[f"i{j}"].value) for j in range(45)] == [j * 3 for j in range(45)]


def test_errors_match_reference():
    ours = run_ours(ERRORS)
    ref = run_ref(ERRORS)
    assert ours == ref


def test_packet_generator_matches_reference():
    assert run_ours(PACKET_GENERATOR) == run_ref(PACKET_GENERATOR)


@pytest.mark.parametrize("mode", ["ROUND_ROBIN", "SERIAL"])
def test_udp_substreams_match_reference(mode):
    """Each destination of a multi-endpoint UdpStream gets the same datagrams,
    in the same order, from us as from the reference."""
    assert run_ours(UDP_SUBSTREAMS, mode) == run_ref(UDP_SUBSTREAMS, mode)


def _heap(n, cnt_item=0x1000):
    ig = spead2.send.ItemGroup()
    import numpy as np

    ig.add_item(cnt_item, "a", "", shape=(n,), dtype=np.uint8, value=np.arange(n, dtype=np.uint8))
    return ig.get_heap(descriptors="none", data="all")


def test_async_send_heaps_same_bytes_as_sync():
    """async_send_heaps puts on the wire what send_heaps does (UDP, two
    destinations, round robin)."""
    heaps = [_heap(3000), _heap(100), _heap(5000)]

    def refs():
        return [spead2.send.HeapReference(h, substream_index=i % 2, cnt=10 + i) for i, h in enumerate(heaps)]

    def collect(send):
        socks = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            socks.append(sock)
        try:
            send([sock.getsockname() for sock in socks])
            out = []
            for sock in socks:
                sock.setblocking(False)
                got = []
                while True:
                    try:
                        got.append(sock.recv(65536))
                    except BlockingIOError:
                        break
                out.append(got)
            return out
        finally:
            for sock in socks:
                sock.close()

    config = spead2.send.StreamConfig(max_heaps=4)

    def sync_send(endpoints):
        stream = spead2.send.UdpStream(spead2.ThreadPool(), endpoints, config)
        stream.send_heaps(refs(), spead2.send.GroupMode.ROUND_ROBIN)

    def async_send(endpoints):
        async def main():
            stream = spead2.send.asyncio.UdpStream(spead2.ThreadPool(), endpoints, config)
            size = await stream.async_send_heaps(spead2.send.HeapReferenceList(refs()),
                                                 spead2.send.GroupMode.ROUND_ROBIN)
            assert size > 8000
            await stream.async_flush()

        asyncio.run(main())

    expected = collect(sync_send)
    assert [len(x) for x in expected] == [3 + 4, 1]
    assert collect(async_send) == expected


def test_async_queue_full():
    """A group larger than max_heaps fails its future with BlockingIOError
    (errno EAGAIN), as the reference does; a bad substream fails with
    OSError(EINVAL); the stream goes on working."""
    import errno

    async def main():
        stream = spead2.send.asyncio.InprocStream(spead2.ThreadPool(), [spead2.InprocQueue()],
                                                  spead2.send.StreamConfig(max_heaps=2))
        refs = [spead2.send.HeapReference(_heap(10)) for _ in range(3)]
        big = stream.async_send_heaps(refs, spead2.send.GroupMode.SERIAL)
        bad = stream.async_send_heap(_heap(10), substream_index=1)
        results = await asyncio.gather(big, bad, return_exceptions=True)
        assert isinstance(results[0], BlockingIOError) and results[0].errno == errno.EAGAIN
        assert type(results[1]) is OSError and results[1].errno == errno.EINVAL
        assert await stream.async_send_heaps(refs[:2], spead2.send.GroupMode.ROUND_ROBIN) > 0
        await stream.async_flush()

    asyncio.run(main())


def test_max_heaps_counts_queued_heaps():
    """Heaps queued with async_send_heap count against max_heaps until sent:
    with a slow stream (1 kB/s) the third of three 1 kB heaps is refused."""

    async def main():
        config = spead2.send.StreamConfig(max_heaps=2, rate=20e3, burst_size=1)
        stream = spead2.send.asyncio.InprocStream(spead2.ThreadPool(), [spead2.InprocQueue()], config)
        futures = [stream.async_send_heap(_heap(1000)) for _ in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert [type(r) for r in results[:2]] == [int, int]
        assert isinstance(results[2], BlockingIOError)

    asyncio.run(main())


def test_round_trip_to_reference_receiver():
    """send_heaps (round robin, repeat_pointers, two destinations) decoded by
    the reference's receiver: each destination gets its heaps' items."""
    import numpy as np

    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(5)
        socks.append(sock)
    try:
        ig = spead2.send.ItemGroup()
        item = ig.add_item(0x1000, "data", "", shape=(3000,), dtype=np.uint8)
        heaps = []
        for i in range(4):
            item.value = np.full(3000, i, np.uint8)
            heap = ig.get_heap(descriptors="all", data="all")
            heap.repeat_pointers = True
            heaps.append(spead2.send.HeapReference(heap, substream_index=i % 2))
        stream = spead2.send.UdpStream(spead2.ThreadPool(), [s.getsockname() for s in socks],
                                       spead2.send.StreamConfig(max_heaps=4, rate=50e6))
        stream.send_heaps(heaps, spead2.send.GroupMode.ROUND_ROBIN)
        blobs = []
        for sock in socks:
            sock.setblocking(False)
            data = b""
            while True:
                try:
                    data += sock.recv(65536)
                except BlockingIOError:
                    break
            blobs.append(data.hex())
    finally:
        for sock in socks:
            sock.close()
    decode = r"""
import json, sys
import spead2, spead2.recv
out = []
for blob in json.loads(sys.stdin.read()):
    stream = spead2.recv.Stream(spead2.ThreadPool())
    stream.add_buffer_reader(bytes.fromhex(blob))
    ig = spead2.ItemGroup()
    values = []
    for heap in stream:
        ig.update(heap)
        values.append([heap.cnt, int(ig['data'].value[0]), int(ig['data'].value.sum())])
    out.append(values)
print(json.dumps(out))
"""
    got = json.loads(refvenv.run_reference(decode, input=json.dumps(blobs)).stdout)
    assert got == [[[1, 0, 0], [3, 2, 6000]], [[2, 1, 3000], [4, 3, 9000]]]
