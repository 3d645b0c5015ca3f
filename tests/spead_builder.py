"""Build SPEAD packets by hand for the tests: the one packet builder they share.

The tests make their packets here rather than with ``spead2.send``, so that
receive tests do not depend on the sender and send tests have an
independent packetiser to compare with.  Everything here follows the wire
format described in the reference behaviour notes (section 1): an 8-byte
header, 8-byte big-endian item pointers, then the payload.  Only the
SPEAD-64-XX flavours exist; XX is the "heap address bits" (40 and 48 are the
common ones).

Besides well-formed packets, :func:`malformed_packet` produces deliberately
broken datagrams, one per kind in :data:`MALFORMED_KINDS`.

The module also contains a tiny decoder (:func:`parse_packet`) so that tests
can compute expectations independently of the code under test.
"""

import functools
import struct

HEAP_CNT_ID = 0x01
HEAP_LENGTH_ID = 0x02
PAYLOAD_OFFSET_ID = 0x03
PAYLOAD_LENGTH_ID = 0x04
DESCRIPTOR_ID = 0x05
STREAM_CTRL_ID = 0x06
NULL_ID = 0x00
CTRL_STREAM_STOP = 2

MAGIC = 0x53
VERSION = 4

#: IDs used by the "descriptor-like" heap: something a place callback that
#: looks for a position item will never accept.
DESCRIPTOR_NAME_ID = 0x10


def _check_flavour(heap_address_bits):
    if heap_address_bits % 8 or not 8 <= heap_address_bits <= 56:
        raise ValueError(f"unsupported heap_address_bits {heap_address_bits}")


def header(n_items, heap_address_bits=48, *, magic=MAGIC, version=VERSION, id_bytes=None, addr_bytes=None,
           reserved=0):
    """The 8-byte packet header.  ``id_bytes``/``addr_bytes`` override the
    widths, ``reserved`` the two reserved bytes."""
    if addr_bytes is None:
        addr_bytes = heap_address_bits // 8
    if id_bytes is None:
        id_bytes = 8 - addr_bytes
    return struct.pack(">BBBBHH", magic, version, id_bytes, addr_bytes, reserved, n_items)


def item_pointer(item_id, value, *, immediate, heap_address_bits=48):
    """One 64-bit big-endian item pointer."""
    _check_flavour(heap_address_bits)
    id_bits = 63 - heap_address_bits
    if not 0 <= item_id < (1 << id_bits):
        raise ValueError(f"item ID {item_id:#x} does not fit in {id_bits} bits")
    if not 0 <= value < (1 << heap_address_bits):
        raise ValueError(f"value {value} does not fit in {heap_address_bits} bits")
    raw = (int(bool(immediate)) << 63) | (item_id << heap_address_bits) | value
    return struct.pack(">Q", raw)


def pointers(triples, *, heap_address_bits=48):
    """Item pointers, in order, from ``(item_id, value, immediate)`` triples."""
    return b"".join(item_pointer(item_id, value, immediate=immediate, heap_address_bits=heap_address_bits)
                    for item_id, value, immediate in triples)


def make_packet(
    heap_cnt,
    heap_length,
    payload_offset,
    payload=b"",
    immediates=(),
    addresses=(),
    *,
    heap_address_bits=48,
    payload_length=None,
    omit=(),
    address_specials=(),
    extra_pointers=b"",
    n_items=None,
    trailing=b"",
    magic=MAGIC,
    version=VERSION,
    id_bytes=None,
    addr_bytes=None,
):
    """Build one SPEAD packet.

    The item pointers are, in order: the four specials as immediates
    (HEAP_CNT, HEAP_LENGTH, PAYLOAD_OFFSET, PAYLOAD_LENGTH — any listed in
    ``omit`` are left out, any listed in ``address_specials`` are written in
    address mode instead), then ``immediates`` (``(id, value)`` pairs), then
    ``addresses`` (``(id, offset-in-heap)`` pairs), then the raw bytes
    ``extra_pointers``.  ``heap_length=None`` omits HEAP_LENGTH.

    Knobs for malformed packets: ``payload_length`` overrides the advertised
    payload length, ``n_items`` overrides the item count in the header,
    ``trailing`` is appended after the payload, and ``magic``/``version``/
    ``id_bytes``/``addr_bytes`` override header fields.
    """
    hab = heap_address_bits
    payload = bytes(payload)
    if payload_length is None:
        payload_length = len(payload)
    specials = [
        (HEAP_CNT_ID, heap_cnt),
        (HEAP_LENGTH_ID, heap_length),
        (PAYLOAD_OFFSET_ID, payload_offset),
        (PAYLOAD_LENGTH_ID, payload_length),
    ]
    pointers = []
    for item_id, value in specials:
        if item_id in omit or value is None:
            continue
        pointers.append(item_pointer(item_id, value, immediate=item_id not in address_specials,
                                     heap_address_bits=hab))
    for item_id, value in immediates:
        pointers.append(item_pointer(item_id, value, immediate=True, heap_address_bits=hab))
    for item_id, value in addresses:
        pointers.append(item_pointer(item_id, value, immediate=False, heap_address_bits=hab))
    body = b"".join(pointers) + extra_pointers
    count = len(body) // 8 if n_items is None else n_items
    hdr = header(count, hab, magic=magic, version=version, id_bytes=id_bytes, addr_bytes=addr_bytes)
    return hdr + body + payload + trailing


def heap_packets(
    heap_cnt,
    payload,
    packet_payload_size,
    immediates=(),
    addresses=None,
    *,
    heap_address_bits=48,
    heap_length=None,
):
    """All packets of one heap, split every ``packet_payload_size`` bytes.

    Like spead2's sender with ``repeat_pointers``, every packet carries the
    specials and all the immediates, so whichever packet arrives first gives
    the place callback the items it needs.  ``addresses`` defaults to a single
    data item (0x1001) at offset 0, and is put in every packet too.
    """
    payload = bytes(payload)
    if addresses is None:
        addresses = [(0x1001, 0)]
    if heap_length is None:
        heap_length = len(payload)
    if packet_payload_size <= 0:
        raise ValueError("packet_payload_size must be positive")
    out = []
    offset = 0
    while True:
        piece = payload[offset:offset + packet_payload_size]
        out.append(make_packet(heap_cnt, heap_length, offset, piece, immediates, addresses,
                               heap_address_bits=heap_address_bits))
        offset += len(piece)
        if offset >= len(payload):
            break
    return out


def stop_heap(heap_cnt, *, heap_address_bits=48, immediates=()):
    """A heap holding the stream-stop control item.

    Like spead2's sender it has one byte of payload (spead2 pads an empty heap
    with a NULL item so that every heap has payload), so the heap reaches the
    place callback of a chunk stream.
    """
    return make_packet(
        heap_cnt, 1, 0, b"\0",
        [(STREAM_CTRL_ID, CTRL_STREAM_STOP), *immediates],
        [(NULL_ID, 0)],
        heap_address_bits=heap_address_bits,
    )


def descriptor_heap(heap_cnt, *, heap_address_bits=48, size=80):
    """A heap shaped like a descriptor-only heap: an addressed DESCRIPTOR item
    and no position (or any other immediate) item, so a place callback that
    looks for a position rejects it.  Single packet."""
    body = bytes((i * 7 + 3) & 0xFF for i in range(size))
    return make_packet(
        heap_cnt, size, 0, body, (), [(DESCRIPTOR_ID, 0)],
        heap_address_bits=heap_address_bits,
    )


def _good(heap_cnt=99, payload=b"\xAB" * 64, hab=48, **kwargs):
    return make_packet(heap_cnt, len(payload), 0, payload, [(0x1000, 0)], [(0x1001, 0)],
                       heap_address_bits=hab, **kwargs)


def malformed_packet(kind, heap_cnt=99):
    """A datagram of the given kind that a receiver must reject as malformed."""
    payload = b"\xAB" * 64
    if kind == "bad_magic":
        return _good(heap_cnt, payload, magic=0x54)
    if kind == "bad_version":
        return _good(heap_cnt, payload, version=3)
    if kind == "zero_id_width":
        return _good(heap_cnt, payload, id_bytes=0, addr_bytes=6)
    if kind == "zero_address_width":
        return _good(heap_cnt, payload, id_bytes=2, addr_bytes=0)
    if kind == "widths_not_64":
        return _good(heap_cnt, payload, id_bytes=3, addr_bytes=6)
    if kind == "n_items_overflow":
        return _good(heap_cnt, payload, n_items=200)
    if kind == "payload_past_end":
        # advertises more payload than the datagram holds
        return _good(heap_cnt, payload, payload_length=len(payload) + 16)
    if kind == "heap_length_too_small":
        # offset + length > heap length
        return make_packet(heap_cnt, 32, 0, payload, [(0x1000, 0)], [(0x1001, 0)])
    if kind == "zero_items":
        return header(0) + payload
    if kind == "trailing_bytes":
        return _good(heap_cnt, payload, trailing=b"\0\0\0\0")
    if kind == "missing_heap_cnt":
        return _good(heap_cnt, payload, omit=(HEAP_CNT_ID,))
    if kind == "missing_payload_offset":
        return _good(heap_cnt, payload, omit=(PAYLOAD_OFFSET_ID,))
    if kind == "missing_payload_length":
        return _good(heap_cnt, payload, omit=(PAYLOAD_LENGTH_ID,))
    if kind == "heap_cnt_as_address":
        # HEAP_CNT present, but in address mode: it is then not a special
        return _good(heap_cnt, payload, address_specials=(HEAP_CNT_ID,))
    if kind == "shorter_than_header":
        return _good(heap_cnt, payload)[:5]
    if kind == "header_only":
        return header(4)
    if kind == "empty":
        return b""
    raise ValueError(f"unknown kind {kind!r}")


MALFORMED_KINDS = [
    "bad_magic",
    "bad_version",
    "zero_id_width",
    "zero_address_width",
    "widths_not_64",
    "n_items_overflow",
    "payload_past_end",
    "heap_length_too_small",
    "zero_items",
    "trailing_bytes",
    "missing_heap_cnt",
    "missing_payload_offset",
    "missing_payload_length",
    "heap_cnt_as_address",
    "shorter_than_header",
    "header_only",
    "empty",
]


# --------------------------------------------------------------------------
# A small independent decoder, for computing expectations.

class ParsedPacket:
    __slots__ = ("heap_address_bits", "heap_cnt", "heap_length", "payload_offset",
                 "payload_length", "immediates", "addresses", "payload", "size")

    def __repr__(self):
        return (f"ParsedPacket(cnt={self.heap_cnt}, len={self.heap_length}, "
                f"off={self.payload_offset}, plen={self.payload_length})")


def parse_packet(data):
    """Decode one SPEAD packet that fills ``data`` exactly; None if invalid."""
    data = bytes(data)
    if len(data) < 8:
        return None
    magic, version, id_bytes, addr_bytes, _, n_items = struct.unpack(">BBBBHH", data[:8])
    if magic != MAGIC or version != VERSION or not id_bytes or not addr_bytes or id_bytes + addr_bytes != 8:
        return None
    hab = addr_bytes * 8
    if 8 + 8 * n_items > len(data):
        return None
    p = ParsedPacket()
    p.heap_address_bits = hab
    p.heap_cnt = p.heap_length = p.payload_offset = p.payload_length = None
    p.immediates = {}
    p.addresses = {}
    value_mask = (1 << hab) - 1
    id_mask = (1 << (63 - hab)) - 1
    for i in range(n_items):
        (raw,) = struct.unpack(">Q", data[8 + 8 * i: 16 + 8 * i])
        immediate = raw >> 63
        item_id = (raw >> hab) & id_mask
        value = raw & value_mask
        if immediate:
            if item_id == HEAP_CNT_ID:
                p.heap_cnt = value
            elif item_id == HEAP_LENGTH_ID:
                p.heap_length = value
            elif item_id == PAYLOAD_OFFSET_ID:
                p.payload_offset = value
            elif item_id == PAYLOAD_LENGTH_ID:
                p.payload_length = value
            p.immediates[item_id] = value
        else:
            p.addresses[item_id] = value
    if p.heap_cnt is None or p.payload_offset is None or p.payload_length is None:
        return None
    start = 8 + 8 * n_items
    p.size = start + p.payload_length
    if p.size != len(data):
        return None
    if p.heap_length is not None and p.payload_offset + p.payload_length > p.heap_length:
        return None
    p.payload = data[start:]
    return p


def reassemble(datagrams):
    """Group valid packets into heaps.

    Returns ``{heap_cnt: (first_packet, payload_bytes_or_None)}`` where the
    payload is None unless every byte of the heap arrived (first packet wins
    for duplicate offsets).
    """
    heaps = {}
    for d in datagrams:
        p = parse_packet(d)
        if p is None or p.heap_length is None:
            continue
        entry = heaps.setdefault(p.heap_cnt, [p, {}])
        entry[1].setdefault(p.payload_offset, p.payload)
    out = {}
    for cnt, (first, pieces) in heaps.items():
        buf = bytearray(first.heap_length)
        covered = 0
        for off, piece in sorted(pieces.items()):
            buf[off:off + len(piece)] = piece
            covered += len(piece)
        out[cnt] = (first, bytes(buf) if covered == first.heap_length else None)
    return out


# --------------------------------------------------------------------------
# Frames around a SPEAD packet, for captures: UDP, IPv4, Ethernet or Linux
# cooked (SLL) link layers.

LOOPBACK = bytes([127, 0, 0, 1])


def udp(payload, *, src_port=1234, dst_port=7148, length_delta=0):
    """A UDP header (checksum 0) and ``payload``; ``length_delta`` makes the
    length field lie by that many bytes."""
    return struct.pack(">HHHH", src_port, dst_port, 8 + len(payload) + length_delta, 0) + payload


def ipv4_checksum(header):
    """The Internet checksum of ``header`` (its checksum field zero)."""
    if len(header) % 2:
        header += b"\0"
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(payload, *, proto=17, ident=0, fragment=0, options=b"", checksum=True, src=LOOPBACK, dst=LOOPBACK):
    """An IPv4 header (TTL 64) and ``payload``.  ``fragment`` is the 16-bit
    flags and fragment offset field (0x4000: don't fragment, 0x2000: more
    fragments); ``options`` (a multiple of 4 bytes) lengthen the header;
    ``checksum=False`` leaves the checksum 0."""
    ihl = 5 + len(options) // 4
    hdr = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, fragment, 64, proto, 0,
                      src, dst) + options
    if checksum:
        hdr = hdr[:10] + struct.pack(">H", ipv4_checksum(hdr)) + hdr[12:]
    return hdr + payload


def ethernet(packet, *, ethertype=0x0800, dst=bytes(6), src=bytes(6), vlan=None, pad=False):
    """An Ethernet frame (no FCS): addresses, an 802.1Q tag with VLAN ID
    ``vlan`` if given, ``ethertype``; ``pad`` pads it to the 60-byte minimum."""
    frame = dst + src
    if vlan is not None:
        frame += struct.pack(">HH", 0x8100, vlan)
    frame += struct.pack(">H", ethertype) + packet
    if pad and len(frame) < 60:
        frame += bytes(60 - len(frame))
    return frame


def linux_sll(packet, *, ethertype=0x0800):
    """A Linux cooked capture (SLL, link type 113) frame: sent to us, from a
    loopback-type device with a 6-byte, all-zero address."""
    return struct.pack(">HHH8sH", 0, 772, 6, bytes(8), ethertype) + packet


# --------------------------------------------------------------------------
# The chunk layout shared by the chunk-stream tests (the same shape as the
# reference's own tests): heaps of 1024 bytes sent as two 512-byte packets,
# ten heaps per chunk, heap position carried by immediate item 0x1000.

HEAP_PAYLOAD_SIZE = 1024
HEAPS_PER_CHUNK = 10
CHUNK_PAYLOAD_SIZE = HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE
PACKETS_PER_HEAP = 2
PACKET_SIZE = HEAP_PAYLOAD_SIZE // PACKETS_PER_HEAP
POSITION_ID = 0x1000
DATA_ID = 0x1001
EXTRA_ID = 0x1002


@functools.lru_cache(maxsize=4096)
def heap_payload(position, size=HEAP_PAYLOAD_SIZE):
    """Deterministic, position-dependent payload bytes."""
    return bytes(((i * 31) + position * 1021 + (i >> 8) * 7) & 0xFF for i in range(size))


def extra_value(position):
    return position ^ 0xBEEF


def position_heap(position, heap_cnt, *, heap_address_bits=48, packet_size=PACKET_SIZE,
                  with_extra=True):
    """Packets of the standard heap for ``position``."""
    immediates = [(POSITION_ID, position)]
    if with_extra:
        immediates.append((EXTRA_ID, extra_value(position)))
    return heap_packets(heap_cnt, heap_payload(position), packet_size, immediates,
                        [(DATA_ID, 0)], heap_address_bits=heap_address_bits)
