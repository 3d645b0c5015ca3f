"""Seeded generator of hostile SPEAD streams for the differential test.

``generate(seed, transport)`` returns a *job*: a JSON-able dict with the
stream configuration, the chunk layout, the parameters of the C place
callback (``diff_place.c``) and the packets, ready for ``diff_runner.py``.
Everything is drawn from ``random.Random(seed)`` (with the transport mixed
into the seed), so a (transport, seed) pair always gives the same job.

What a job may contain (each seed draws a subset; ``job["features"]`` lists
what it drew, for reports):

* stream settings: max_heaps 1-8, 1-4 substreams, allow_out_of_order both
  ways, stop_on_stop_item both ways, a stream_id, max_chunks 1-5, packet
  presence, max_heap_extra, custom COUNTER/MAXIMUM statistics;
* placement: chunk IDs with a bias (up to just below 2^63, or negative),
  rejected heaps, placements fully outside the chunk, heaps longer than their
  slot, positions jumping forward (inside and beyond the window) and back
  (too old);
* heaps: SPEAD-64-XX flavours 8-56 (mostly 40 and 48) and a heap whose
  packets mix flavours, single- and multi-packet heaps, heap length 0, heaps
  without HEAP_LENGTH, descriptor-like heaps, stop items in their own heap,
  inside a data heap (first or later packet), in address mode or with other
  values, item addresses beyond HEAP_LENGTH, position items duplicated, in
  address mode or only in later packets, conflicting HEAP_LENGTHs, reused
  heap counters;
* packets: interleaved heaps, loss, duplicated packets and whole heaps, local
  and far reordering, irregular splits (partial overlaps), malformed packets
  of every kind in spec section 1.4, and for pcap non-SPEAD frames (ARP, TCP,
  fragments, truncated captures, padding, IP options, Linux SLL).
"""

import base64
import random
import struct

import spead_builder as sb

TRANSPORTS = ("inproc", "buffer", "pcap")

#: Bump when a change makes old seeds generate different jobs (the
#: regression seed lists in test_differential.py are for this version).
GENERATOR_VERSION = 1

HEAP_CNT_ID = sb.HEAP_CNT_ID
HEAP_LENGTH_ID = sb.HEAP_LENGTH_ID
PAYLOAD_OFFSET_ID = sb.PAYLOAD_OFFSET_ID
PAYLOAD_LENGTH_ID = sb.PAYLOAD_LENGTH_ID
STREAM_CTRL_ID = sb.STREAM_CTRL_ID
DESCRIPTOR_ID = sb.DESCRIPTOR_ID
NULL_ID = sb.NULL_ID

#: Malformed kinds on top of spead_builder.MALFORMED_KINDS (all rejected by
#: the packet decoder, spec section 1.4, or by the transport's size check).
EXTRA_MALFORMED_KINDS = [
    "real_truncated",       # a real packet of a live heap, last byte missing
    "real_trailing",        # a real packet of a live heap, one byte too many
    "real_short_plen",      # PAYLOAD_LENGTH one less than the payload
    "real_bad_widths",      # a real packet with id+addr widths of 9 bytes
    "specials_addressed",   # all four specials in address mode
    "offset_past_length",   # payload_offset + payload_length > heap_length
    "only_header_items",    # n_items pointers present, payload missing
    "tiny",                 # 1..7 bytes
]

#: Frames a pcap may hold besides the SPEAD datagrams.
PCAP_JUNK_KINDS = ["arp", "tcp", "ipv6", "fragment", "truncated", "empty_udp", "udp_len_short",
                   "udp_len_long", "not_spead"]


class Flavour:
    def __init__(self, hab):
        self.hab = hab
        self.maxval = (1 << hab) - 1
        id_bits = 63 - hab
        if id_bits >= 13:
            base = 0x1000
        else:
            base = 0x40
        self.pos_id = base
        self.data_id = base + 1
        self.extra_id = base + 2
        self.junk_id = base + 3
        self.data2_id = base + 4


def build_packet(hab, pointers, payload, *, reserved=0):
    """pointers: list of (item_id, value, immediate)."""
    return (sb.header(len(pointers), hab, reserved=reserved) + sb.pointers(pointers, heap_address_bits=hab)
            + payload)


class Gen:
    def __init__(self, seed, transport):
        self.seed = seed
        self.transport = transport
        self.rng = random.Random(f"{transport}:{seed}")
        self.features = set()

    def feat(self, name):
        self.features.add(name)

    def chance(self, p):
        return self.rng.random() < p

    # ------------------------------------------------------------------
    def configure(self):
        r = self.rng
        self.fl = Flavour(r.choice([48] * 5 + [40] * 5 + [16, 24, 32, 56, 8]))
        if self.fl.hab not in (40, 48):
            self.feat(f"flavour{self.fl.hab}")
        maxval = self.fl.maxval
        self.stream = {
            "max_heaps": r.randint(1, 8),
            "substreams": r.choice([1, 1, 1, 2, 3, 4]),
            "allow_out_of_order": self.chance(0.5),
            "stop_on_stop_item": self.chance(0.85),
            "stream_id": r.choice([0, 0, r.randint(1, 1 << 40)]),
            "memcpy": r.choice([0, 0, 1]),            # MEMCPY_STD / MEMCPY_NONTEMPORAL
            "explicit_start": self.chance(0.2),
        }
        if self.stream["substreams"] > 1:
            self.feat("substreams")
        if self.stream["allow_out_of_order"]:
            self.feat("ooo")
        if not self.stream["stop_on_stop_item"]:
            self.feat("ignore_stop")
        self.hpc = r.randint(1, 6)
        slots = [1, 2, 5, 8, 16, 24, 64, 100, 128, 256]
        if self.fl.hab == 8:
            slots = [1, 2, 5, 8, 16, 24]
        self.slot = r.choice(slots)
        k = r.choice([1, 1, 2, 2, 3, 4, 5])
        self.psize = max(1, -(-self.slot // k))  # packet payload size
        presence = 0
        flags_per_slot = 1
        if self.chance(0.25):
            presence = r.choice([self.psize] * 3 + [max(1, self.psize // 2), self.psize * 2])
            flags_per_slot = -(-self.slot // presence) + r.choice([0, 0, 1])
            self.feat("presence")
        self.max_chunks = r.randint(1, 5)
        mhe = r.choice([0, 0, 0, 8, 16, 24, 3])
        extra_size = 0
        if mhe:
            extra_size = r.choice([mhe, mhe, r.randint(0, mhe)])
            self.feat("extra")
        extra_per_heap = extra_size + r.choice([0, 0, 4])
        with_extra = bool(mhe) and (extra_per_heap > 0 or self.chance(0.5))
        extra_total = self.hpc * extra_per_heap if with_extra else 0
        if with_extra and extra_total == 0:
            extra_total = 4
        self.layout = {
            "heaps_per_chunk": self.hpc,
            "slot_size": self.slot,
            "flags_per_slot": flags_per_slot,
            "data_size": self.hpc * self.slot,
            "present_size": self.hpc * flags_per_slot,
            "extra_total": extra_total,
            "with_extra": with_extra,
        }
        self.chunk = {"max_chunks": self.max_chunks, "max_heap_extra": mhe, "presence": presence}

        # Requested items
        fl = self.fl
        wanted = [fl.pos_id, HEAP_LENGTH_ID, PAYLOAD_LENGTH_ID, HEAP_CNT_ID, fl.extra_id]
        pos_from_cnt = self.chance(0.15)
        if pos_from_cnt:
            self.feat("pos_from_cnt")
        items = [w for w in wanted if w in (HEAP_LENGTH_ID, HEAP_CNT_ID) or self.chance(0.85)]
        if not pos_from_cnt and fl.pos_id not in items:
            items.append(fl.pos_id)
        if self.chance(0.2):
            items.append(fl.junk_id + 7)  # never sent
        if self.chance(0.15):
            items.append(r.choice(items))  # a duplicate
        if self.chance(0.1):
            items.append(PAYLOAD_OFFSET_ID)
        r.shuffle(items)
        self.chunk["items"] = items

        def idx(item_id):
            return items.index(item_id) if item_id in items else -1

        # Bias of chunk IDs
        bias_kind = r.choice(["zero"] * 6 + ["small", "huge", "huge", "negative"])
        bias = 0
        if bias_kind == "small":
            bias = r.randint(1, 50)
        elif bias_kind == "huge":
            bias = (1 << 63) - 1 - r.randint(0, 40)
            self.feat("bias_huge")
        elif bias_kind == "negative":
            bias = -r.randint(1, 6)
            self.feat("bias_negative")
        oor_mod = 0
        if self.chance(0.3):
            oor_mod = r.randint(2, 9)
            self.feat("out_of_range")
        reject_mod = r.choice([0, 0, 0, r.randint(2, 7)])
        self.params = {
            "idx_pos": idx(fl.pos_id),
            "idx_len": idx(HEAP_LENGTH_ID),
            "idx_plen": idx(PAYLOAD_LENGTH_ID),
            "idx_cnt": idx(HEAP_CNT_ID),
            "idx_extra": idx(fl.extra_id),
            "n_items": len(items),
            "heaps_per_chunk": self.hpc,
            "slot_size": self.slot,
            "flags_per_slot": flags_per_slot,
            "bias": bias,
            "data_size": self.layout["data_size"],
            "present_size": self.layout["present_size"],
            "extra_total": extra_total,
            "extra_per_heap": extra_per_heap,
            "extra_size": extra_size if with_extra else 0,
            "presence_payload": presence,
            "reject_mod": reject_mod,
            "reject_rem": r.randint(0, max(0, reject_mod - 1)),
            "oor_mod": oor_mod,
            "oor_rem": r.randint(0, max(0, oor_mod - 1)),
            "overflow_oor": int(self.chance(0.5)),
            "max_len": r.choice([-1, -1, -1, 2 * self.slot]),
            "pos_from_cnt": int(pos_from_cnt),
        }
        # Custom statistics, in random order
        stats = [("diff.placed", "COUNTER", "counter"), ("diff.max_len", "MAXIMUM", "max"),
                 ("diff.rejects", "COUNTER", "reject"),
                 ("diff.unused", r.choice(["COUNTER", "MAXIMUM"]), "unused")]
        stats = [s for s in stats if self.chance(0.6)]
        r.shuffle(stats)
        self.custom_stats = [list(s) for s in stats]
        self.poke = None
        if self.chance(0.06):
            self.poke = r.choice(["heaps", "packets", "batches", "max_batch", "search_dist",
                                  "too_old_heaps", "rejected_heaps"])
            self.feat(f"poke_{self.poke}")
            self.custom_stats.insert(r.randint(0, len(self.custom_stats)), ["diff.calls", "COUNTER", "calls"])
        self.data_ring = r.randint(1, 4)

    # ------------------------------------------------------------------
    def make_heaps(self):
        """A list of heap descriptions (dicts), in sending order."""
        r = self.rng
        fl = self.fl
        maxval = fl.maxval
        n_heaps = r.choice([r.randint(2, 12), r.randint(10, 40), r.randint(20, 70), r.randint(20, 70),
                            r.randint(100, 200) if self.chance(0.3) else 30])
        if fl.hab == 8:
            n_heaps = min(n_heaps, 30)
        window = self.max_chunks * self.hpc
        pos = r.choice([0, 0, r.randint(0, 3 * window), r.randint(0, 2000)])
        pos = min(pos, maxval // 4)
        cnt = r.choice([1, 1, r.randint(0, 1000), max(0, min(maxval, 1 << 40) - 200)])
        cnt = min(cnt, maxval // 2)
        step_kind = r.choice(["one"] * 5 + ["substream", "random"])
        kinds = [
            ("data", 60), ("short", 5), ("long", 5), ("zero", 3), ("unsized", 3), ("part_unsized", 2),
            ("descriptor", 3), ("stop", 1), ("stop_in_data", 2), ("stop_addr", 1), ("stop_value", 1),
            ("addr_beyond", 3), ("pos_address", 2), ("pos_dup", 2), ("pos_later", 2),
            ("len_conflict", 2), ("flavour_mix", 2), ("items_first_only", 3), ("special_dup", 2),
            ("special_addr", 2), ("single_dup", 2), ("null_pad", 2), ("cnt_reuse", 3), ("resplit", 3),
        ]
        names = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        calm = self.chance(0.25)
        heaps = []
        used_cnts = []
        for i in range(n_heaps):
            kind = "data" if calm else r.choices(names, weights)[0]
            # Position movement
            move = r.random()
            if i == 0 or move < 0.75:
                pass
            elif move < 0.82:
                pos += r.randint(1, window + 1)
                self.feat("jump_in_window")
            elif move < 0.86:
                pos += r.randint(window + 1, 20 * window + 50)
                self.feat("jump_beyond_window")
            elif move < 0.92:
                pos -= r.randint(1, 2 * window + 2)
                self.feat("jump_back")
            elif move < 0.95:
                pos -= r.randint(window, 30 * window + 30)
                self.feat("jump_back_far")
            else:
                pass  # same position again
            pos = max(0, min(pos, maxval // 2))
            # Heap counter
            if step_kind == "one":
                cnt += 1
            elif step_kind == "substream":
                cnt += self.stream["substreams"]
            else:
                cnt += r.randint(1, 3)
            cnt = min(cnt, maxval)
            this_cnt = cnt
            if kind == "cnt_reuse" and used_cnts:
                this_cnt = r.choice(used_cnts[-8:])
                self.feat("cnt_reuse")
                kind = "data"
            used_cnts.append(this_cnt)
            heaps.append(self.make_heap(kind, this_cnt, pos))
            pos += 1
        # A stop heap at the end, or not; junk after it sometimes.
        end = r.random()
        if end < 0.5:
            cnt = min(cnt + 1, maxval)
            heaps.append(self.make_heap("stop", cnt, pos))
            if self.chance(0.3):
                cnt = min(cnt + 1, maxval)
                heaps.append(self.make_heap("data", cnt, pos + 1))
                self.feat("data_after_stop")
        return heaps

    def make_heap(self, kind, cnt, pos):
        r = self.rng
        fl = self.fl
        hab = fl.hab
        maxval = fl.maxval
        slot = self.slot
        length = slot
        h = {"kind": kind, "cnt": cnt, "pos": pos, "hab": hab}
        if kind == "short" and slot > 1:
            length = r.randint(1, slot - 1)
        elif kind == "long":
            length = slot + r.randint(1, slot)
        elif kind == "zero":
            length = 0
        elif kind in ("descriptor",):
            length = r.randint(1, 80)
        elif kind == "stop":
            length = r.choice([1, 1, 0, r.randint(1, 20)])
        if kind != "data":
            self.feat(kind)
        length = min(length, maxval)
        payload = r.randbytes(length)
        h["length"] = length
        extra_value = r.randint(0, min(maxval, (1 << 40)))
        # Item pointers carried by every packet (besides the specials)
        common = []
        first_only = []
        if kind not in ("descriptor", "stop", "pos_address", "pos_later", "items_first_only"):
            common.append((fl.pos_id, pos, True))
        if kind == "pos_address":
            common.append((fl.pos_id, 0, False))
        if kind == "pos_dup":
            common = [(fl.pos_id, r.randint(0, pos + 5), True)] + common
        if kind == "items_first_only":
            first_only.append((fl.pos_id, pos, True))
        if kind not in ("descriptor", "stop"):
            common.append((fl.extra_id, extra_value, True))
            (first_only if kind == "items_first_only" else common).append((fl.data_id, 0, False))
        if kind == "descriptor":
            common.append((DESCRIPTOR_ID, 0, False))
        if kind == "addr_beyond":
            common.append((fl.data2_id, length + r.randint(1, 50), False))
        if kind == "null_pad":
            common.append((NULL_ID, r.randint(0, length), False))
        if kind == "special_addr":
            common.append((r.choice([HEAP_LENGTH_ID, PAYLOAD_OFFSET_ID, HEAP_CNT_ID, PAYLOAD_LENGTH_ID]),
                           r.randint(0, length + 20), False))
        if kind == "stop":
            common.append((STREAM_CTRL_ID, sb.CTRL_STREAM_STOP, True))
            common.append((NULL_ID, 0, False))
        if kind == "stop_addr":
            common.append((STREAM_CTRL_ID, sb.CTRL_STREAM_STOP, False))
        if kind == "stop_value":
            common.append((STREAM_CTRL_ID, r.choice([0, 1, 3, 4]), True))
        if self.chance(0.1):
            common.append((fl.junk_id, r.randint(0, maxval), self.chance(0.5)))
        r.shuffle(common)

        # Split into packets
        if length == 0:
            cuts = [0]
        elif self.chance(0.8):
            cuts = list(range(0, length, self.psize))
        else:
            n = r.randint(1, min(6, length))
            cuts = sorted({0, *r.sample(range(1, length), n - 1)}) if length > 1 else [0]
            self.feat("irregular_split")
        pieces = []
        for j, start in enumerate(cuts):
            end = cuts[j + 1] if j + 1 < len(cuts) else length
            pieces.append((start, end))
        stop_at = None
        if kind == "stop_in_data":
            stop_at = r.choice([0, len(pieces) - 1, r.randrange(len(pieces))])
        conflict_at = r.randrange(len(pieces)) if kind == "len_conflict" else None
        flavour_at = r.randrange(len(pieces)) if kind == "flavour_mix" else None
        unsized_at = None
        if kind == "part_unsized":
            unsized_at = r.choice([0, r.randrange(len(pieces))])
        later_pos_from = r.randint(1, max(1, len(pieces) - 1)) if kind == "pos_later" else None
        packets = []
        for j, (start, end) in enumerate(pieces):
            specials = [
                (HEAP_CNT_ID, cnt, True),
                (HEAP_LENGTH_ID, length, True),
                (PAYLOAD_OFFSET_ID, start, True),
                (PAYLOAD_LENGTH_ID, end - start, True),
            ]
            if kind == "unsized" or j == unsized_at:
                specials = [s for s in specials if s[0] != HEAP_LENGTH_ID]
            if j == conflict_at:
                specials[1] = (HEAP_LENGTH_ID, min(maxval, length + r.choice([1, 8, slot])), True)
            if kind == "special_dup":
                which = r.choice([0, 1, 2])
                if which == 0:  # HEAP_LENGTH repeated with the same value
                    specials.append((HEAP_LENGTH_ID, length, True))
                elif which == 1:  # an earlier HEAP_CNT that the later one overrides
                    specials.insert(0, (HEAP_CNT_ID, min(maxval, cnt + 1000), True))
                else:  # an earlier, different HEAP_LENGTH that the later one overrides
                    specials.insert(0, (HEAP_LENGTH_ID, min(maxval, length + 5), True))
            if self.chance(0.1):
                r.shuffle(specials)
            ptrs = list(specials)
            ptrs += common
            if j == 0:
                ptrs += first_only
            if later_pos_from is not None and j >= later_pos_from:
                ptrs.append((fl.pos_id, pos, True))
            if j == stop_at:
                ptrs.append((STREAM_CTRL_ID, sb.CTRL_STREAM_STOP, True))
            if kind == "pos_dup" and self.chance(0.3):
                ptrs.append((fl.pos_id, r.randint(0, pos + 5), False))  # address mode: not a value
            if self.chance(0.03):
                r.shuffle(ptrs)  # specials no longer leading
                self.feat("shuffled_pointers")
            phab = hab
            if j == flavour_at:
                phab = 40 if hab != 40 else 48
                if not all(v <= (1 << phab) - 1 and i < (1 << (63 - phab)) for i, v, _ in ptrs):
                    phab = hab
            packets.append(build_packet(phab, ptrs, payload[start:end],
                                        reserved=r.choice([0] * 20 + [0x1234])))
        if kind == "single_dup" and len(packets) == 1:
            packets = packets * 2
        if kind == "resplit" and length > 1:
            # Some of the payload again, cut differently: partial overlaps
            n = r.randint(1, min(4, length))
            alt = sorted({0, *r.sample(range(1, length), n - 1)})
            for j, start in enumerate(alt):
                end = alt[j + 1] if j + 1 < len(alt) else length
                if self.chance(0.6):
                    ptrs = [(HEAP_CNT_ID, cnt, True), (HEAP_LENGTH_ID, length, True),
                            (PAYLOAD_OFFSET_ID, start, True), (PAYLOAD_LENGTH_ID, end - start, True)] + common
                    packets.insert(r.randint(0, len(packets)), build_packet(hab, ptrs, payload[start:end]))
        h["packets"] = packets
        return h

    # ------------------------------------------------------------------
    def malformed(self, live_packets):
        r = self.rng
        kinds = sb.MALFORMED_KINDS + EXTRA_MALFORMED_KINDS
        kind = r.choice(kinds)
        self.feat("malformed")
        live_packets = [p for p in live_packets if len(p) >= 16]
        real = r.choice(live_packets) if live_packets else None
        cnt = r.randint(0, 200)
        if kind == "empty" and self.transport == "inproc":
            # The reference's inproc reader accepts an empty packet (decoded
            # size 0 == packet size 0) and adds an uninitialised packet
            # header: undefined behaviour, not comparable.  See
            # test_differential.py (REFERENCE_BUGS).
            kind = "shorter_than_header"
        if kind in sb.MALFORMED_KINDS:
            return sb.malformed_packet(kind, heap_cnt=cnt)
        if real is None or kind == "tiny":
            return r.randbytes(r.randint(1, 7))
        if kind == "real_truncated":
            return real[:-1]
        if kind == "real_trailing":
            return real + b"\0"
        if kind == "real_bad_widths":
            return real[:2] + bytes([real[2] + 1]) + real[3:]
        fl = self.fl
        hab = fl.hab
        if kind == "real_short_plen":
            return build_packet(hab, [(HEAP_CNT_ID, cnt, True), (HEAP_LENGTH_ID, 16, True),
                                      (PAYLOAD_OFFSET_ID, 0, True), (PAYLOAD_LENGTH_ID, 7, True)], b"\x11" * 8)
        if kind == "specials_addressed":
            return build_packet(hab, [(HEAP_CNT_ID, cnt, False), (HEAP_LENGTH_ID, 8, False),
                                      (PAYLOAD_OFFSET_ID, 0, False), (PAYLOAD_LENGTH_ID, 8, False)], b"\x22" * 8)
        if kind == "offset_past_length":
            return build_packet(hab, [(HEAP_CNT_ID, cnt, True), (HEAP_LENGTH_ID, 8, True),
                                      (PAYLOAD_OFFSET_ID, 4, True), (PAYLOAD_LENGTH_ID, 8, True)], b"\x33" * 8)
        if kind == "only_header_items":
            p = build_packet(hab, [(HEAP_CNT_ID, cnt, True), (HEAP_LENGTH_ID, 8, True),
                                   (PAYLOAD_OFFSET_ID, 0, True), (PAYLOAD_LENGTH_ID, 8, True)], b"\x44" * 8)
            return p[:-8]
        raise AssertionError(kind)

    def packet_stream(self, heaps):
        r = self.rng
        k = r.choice([1, 1, 1, 2, 3, 4])
        if k > 1:
            self.feat("interleave")
        queues = [list(h["packets"]) for h in heaps]
        active = []
        nxt = 0
        out = []
        while active or nxt < len(queues):
            while len(active) < k and nxt < len(queues):
                active.append(queues[nxt])
                nxt += 1
            q = active[0] if self.chance(0.5) else r.choice(active)
            out.append(q.pop(0))
            if not q:
                active.remove(q)

        hostile = self.chance(0.75)
        p_loss = r.choice([0, 0, 0.02, 0.1, 0.3]) if hostile else 0
        p_dup = r.choice([0, 0, 0.03, 0.1]) if hostile else 0
        p_heapdup = r.choice([0, 0, 0.05]) if hostile else 0
        p_swap = r.choice([0, 0, 0.05, 0.2]) if hostile else 0
        swap_dist = r.choice([2, 5, 20])
        p_far = r.choice([0, 0, 0.02]) if hostile else 0
        p_mal = r.choice([0, 0, 0.02, 0.08]) if hostile else 0
        if self.transport == "buffer" and self.chance(0.7):
            p_mal = 0  # the buffer reader stops at the first bad packet
        if p_loss:
            out = [p for p in out if not self.chance(p_loss)]
            self.feat("loss")
        if p_heapdup:
            for h in heaps:
                if self.chance(p_heapdup) and h["packets"]:
                    at = r.randint(0, len(out))
                    out[at:at] = list(h["packets"])
                    self.feat("heap_dup")
        if p_dup:
            i = 0
            while i < len(out):
                if self.chance(p_dup):
                    at = min(len(out), i + 1 + r.choice([0, 0, r.randint(0, 30)]))
                    out.insert(at, out[i])
                    self.feat("dup")
                    i += 1
                i += 1
        if p_swap:
            for i in range(len(out)):
                if self.chance(p_swap):
                    j = min(len(out) - 1, i + r.randint(1, swap_dist))
                    out[i], out[j] = out[j], out[i]
                    self.feat("reorder")
        if p_far:
            for i in range(len(out)):
                if self.chance(p_far):
                    p = out.pop(i)
                    out.insert(min(len(out), i + r.randint(30, 300)), p)
                    self.feat("reorder_far")
        if p_mal:
            i = 0
            while i <= len(out):
                if self.chance(p_mal):
                    live = out[max(0, i - 5):i + 5]
                    out.insert(i, self.malformed(live))
                    i += 1
                i += 1
        return out

    # ------------------------------------------------------------------
    def pcap(self, packets):
        r = self.rng
        link = 113 if self.chance(0.2) else 1
        if link == 113:
            self.feat("sll")
        p_junk = r.choice([0, 0, 0.03, 0.1])
        pad = self.chance(0.5)
        records = []
        for p in packets:
            if p_junk and self.chance(p_junk):
                records.append(self.junk_frame(link))
            records.append(_frame(link, _ipv4_udp(p, options=self.chance(0.02)), pad=pad))
        if p_junk and self.chance(0.5):
            records.append(self.junk_frame(link))
        return link, [rec if isinstance(rec, tuple) else (rec, len(rec)) for rec in records]

    def junk_frame(self, link):
        r = self.rng
        kind = r.choice(PCAP_JUNK_KINDS)
        self.feat("pcap_junk")
        self.feat(f"pcap_{kind}")
        payload = sb.malformed_packet("bad_magic") if kind == "not_spead" else r.randbytes(r.randint(8, 40))
        if kind == "arp":
            return _frame(link, r.randbytes(28), ethertype=0x0806)
        if kind == "tcp":
            return _frame(link, _ipv4(r.randbytes(30), proto=6))
        if kind == "ipv6":
            return _frame(link, b"\x60" + r.randbytes(47), ethertype=0x86DD)
        if kind == "fragment":
            return _frame(link, _ipv4_udp(payload, frag=r.choice([0x2000, 0x0001, 0x2005])))
        if kind == "truncated":
            frame = _frame(link, _ipv4_udp(payload))
            return (frame[:-r.randint(1, 8)], len(frame))
        if kind == "empty_udp":
            return _frame(link, _ipv4_udp(b""))
        if kind == "udp_len_short":
            return _frame(link, _ipv4_udp(payload, udp_len_delta=-3))
        if kind == "udp_len_long":
            return _frame(link, _ipv4_udp(payload, udp_len_delta=+5))
        return _frame(link, _ipv4_udp(payload))

    # ------------------------------------------------------------------
    def job(self):
        self.configure()
        heaps = self.make_heaps()
        packets = self.packet_stream(heaps)
        job = {
            "key": f"{self.transport}:{self.seed}",
            "seed": self.seed,
            "transport": self.transport,
            "stream": self.stream,
            "chunk": self.chunk,
            "layout": self.layout,
            "params": self.params,
            "custom_stats": self.custom_stats,
            "poke": self.poke,
            "data_ring": self.data_ring,
        }
        if self.transport in ("inproc", "buffer"):
            # buffer: the runner concatenates them
            job["packets"] = [base64.b64encode(p).decode() for p in packets]
        elif self.transport == "pcap":
            link, records = self.pcap(packets)
            job["link"] = link
            job["records"] = [[base64.b64encode(data).decode(), orig] for data, orig in records]
        else:
            raise ValueError(self.transport)
        job["n_packets"] = len(packets)
        job["features"] = sorted(self.features)
        return job


def generate(seed, transport):
    return Gen(seed, transport).job()


# ----------------------------------------------------------------------
# pcap framing

def _ipv4(payload, *, proto=17, frag=0, options=False):
    return sb.ipv4(payload, proto=proto, ident=0x1234, fragment=frag,
                   options=b"\x01\x01\x01\x00" if options else b"")  # NOP NOP NOP EOL


def _ipv4_udp(payload, *, frag=0, options=False, udp_len_delta=0):
    return _ipv4(sb.udp(payload, src_port=40000, length_delta=udp_len_delta), frag=frag, options=options)


def _frame(link, ip, *, ethertype=0x0800, pad=False):
    if link == 1:
        return sb.ethernet(ip, ethertype=ethertype, dst=b"\x01\x02\x03\x04\x05\x06",
                           src=b"\x0a\x0b\x0c\x0d\x0e\x0f", pad=pad)
    return sb.linux_sll(ip, ethertype=ethertype)


def manual_job(key, packets, *, transport="inproc", hab=48, max_chunks=2, heaps_per_chunk=2, slot=16,
               max_heaps=4, substreams=1, allow_out_of_order=False, presence=0, max_heap_extra=0,
               bias=0, custom_stats=(("diff.placed", "COUNTER", "counter"), ("diff.max_len", "MAXIMUM", "max")),
               poke=None, data_ring=2):
    """A job (as generate() makes) for hand-written packets.

    The callback reads the position from item Flavour(hab).pos_id and
    HEAP_LENGTH; heap ``pos`` goes to chunk ``pos // heaps_per_chunk + bias``,
    slot ``pos % heaps_per_chunk`` of ``slot`` bytes.
    """
    fl = Flavour(hab)
    items = [fl.pos_id, HEAP_LENGTH_ID]
    flags_per_slot = -(-slot // presence) if presence else 1
    params = {
        "idx_pos": 0, "idx_len": 1, "idx_plen": -1, "idx_cnt": -1, "idx_extra": -1, "n_items": 2,
        "heaps_per_chunk": heaps_per_chunk, "slot_size": slot, "flags_per_slot": flags_per_slot,
        "bias": bias, "data_size": heaps_per_chunk * slot, "present_size": heaps_per_chunk * flags_per_slot,
        "extra_total": 0, "extra_per_heap": 0, "extra_size": 0, "presence_payload": presence,
        "reject_mod": 0, "reject_rem": 0, "oor_mod": 0, "oor_rem": 0, "overflow_oor": 0,
        "max_len": -1, "pos_from_cnt": 0,
    }
    job = {
        "key": key, "seed": -1, "transport": transport,
        "stream": {"max_heaps": max_heaps, "substreams": substreams, "allow_out_of_order": allow_out_of_order,
                   "stop_on_stop_item": True, "stream_id": 0},
        "chunk": {"max_chunks": max_chunks, "max_heap_extra": max_heap_extra, "presence": presence,
                  "items": items},
        "layout": {"heaps_per_chunk": heaps_per_chunk, "slot_size": slot, "flags_per_slot": flags_per_slot,
                   "data_size": params["data_size"], "present_size": params["present_size"],
                   "extra_total": 0, "with_extra": False},
        "params": params,
        "custom_stats": [list(s) for s in custom_stats],
        "poke": poke,
        "data_ring": data_ring,
        "n_packets": len(packets),
        "features": ["manual"],
    }
    if transport == "pcap":
        job["link"] = 1
        job["records"] = []
        for p in packets:
            frame = _frame(1, _ipv4_udp(p))
            job["records"].append([base64.b64encode(frame).decode(), len(frame)])
    else:
        job["packets"] = [base64.b64encode(p).decode() for p in packets]
    return job


def position_packet(cnt, pos, length, offset, payload, *, hab=48, extra_pointers=()):
    """One packet of heap ``cnt`` (position ``pos``) carrying payload[offset:offset+len]."""
    fl = Flavour(hab)
    ptrs = [(HEAP_CNT_ID, cnt, True), (HEAP_LENGTH_ID, length, True), (PAYLOAD_OFFSET_ID, offset, True),
            (PAYLOAD_LENGTH_ID, len(payload), True), (fl.pos_id, pos, True), *extra_pointers]
    return build_packet(hab, ptrs, payload)
