"""Receive-side decoding: descriptors and item values from received heaps.

:class:`RawDescriptor` is a descriptor as it was on the wire (parsed from the
value of a ``DESCRIPTOR_ID`` item, which is itself a one-packet SPEAD heap).
:meth:`Descriptor.from_raw`, :meth:`Item.set_from_raw` and
:meth:`ItemGroup.update` (attached to the classes of :mod:`spead2._items`)
turn received heaps into typed values, as the reference does:

* items with a numpy dtype, and format items whose fields all have an exact
  numpy equivalent, become numpy arrays (converted to `new_order` byte
  order), reshaped in the item's order; a variable dimension takes what the
  payload holds; immediates are padded at the head, other items at the tail;
* other formats are unpacked bit by bit (most significant bit first) into
  arrays of Python objects;
* a one-dimensional ``c8`` item becomes a ``str``; shape ``()`` gives a scalar.
"""

import ast
import logging

import numpy as np

from . import _items
from ._items import (
    _BUG_COMPAT_DESCRIPTOR_WIDTHS,
    _BUG_COMPAT_SHAPE_BIT_1,
    _BUG_COMPAT_SWAP_ENDIAN,
    _NUMPY_FIELD_TYPES,
    Descriptor,
    Flavour,
    Item,
    ItemGroup,
)

_logger = logging.getLogger("spead2")

_DESCRIPTOR_ID = 0x05
_STREAM_CTRL_ID = 0x06
_SPECIAL_IDS = range(0x01, 0x05)


class RawDescriptor:
    """A descriptor as received: ``id``, ``name`` and ``description`` (bytes),
    ``shape`` (list, ``None`` for a variable dimension), ``format`` (list of
    ``(code, bits)``) and ``numpy_header`` (bytes, empty for format items)."""

    def __init__(self, id=0, name=b"", description=b"", shape=(), format=(), numpy_header=b""):
        self.id = id
        self.name = name
        self.description = description
        self.shape = list(shape)
        self.format = list(format)
        self.numpy_header = numpy_header

    def __repr__(self):
        return (
            f"RawDescriptor(id={self.id:#x}, name={self.name!r}, description={self.description!r}, "
            f"shape={self.shape!r}, format={self.format!r}, numpy_header={self.numpy_header!r})"
        )


def _items_of_packet(data):
    """(heap_address_bits, id_bytes, {id: bytes}) of a one-packet heap, or None."""
    if len(data) < 8 or data[0] != 0x53 or data[1] != 4:
        return None
    id_bytes, addr_bytes = data[2], data[3]
    if id_bytes == 0 or addr_bytes == 0 or id_bytes + addr_bytes != 8:
        return None
    n_items = int.from_bytes(data[6:8], "big")
    start = 8 + 8 * n_items
    if start > len(data):
        return None
    hab = addr_bytes * 8
    mask = (1 << hab) - 1
    immediates = {}
    addressed = []
    payload_length = None
    for i in range(n_items):
        raw = int.from_bytes(data[8 + 8 * i : 16 + 8 * i], "big")
        immediate = bool(raw >> 63)
        item_id = (raw >> hab) & ((1 << (63 - hab)) - 1)
        value = raw & mask
        if immediate:
            if item_id == 0x04:
                payload_length = value
            immediates[item_id] = value.to_bytes(addr_bytes, "big")
        elif item_id not in _SPECIAL_IDS:
            addressed.append((value, item_id))
    payload = data[start:]
    if payload_length is not None:
        payload = payload[:payload_length]
    out = dict(immediates)
    addressed.sort(key=lambda entry: entry[0])
    # As for heap items: each runs to the next item's address, so of several
    # at one address (an empty description next to the shape, say) only the
    # last keeps the bytes, and a zero-length item is absent.
    for i, (address, item_id) in enumerate(addressed):
        end = addressed[i + 1][0] if i + 1 < len(addressed) else len(payload)
        if end > address:
            out[item_id] = bytes(payload[address:end])
    return hab, id_bytes, out


def parse_raw_descriptor(data, bug_compat=0):
    """Parse the value of a ``DESCRIPTOR_ID`` item; ``None`` if malformed."""
    parsed = _items_of_packet(bytes(data))
    if parsed is None:
        return None
    hab, id_bytes, items = parsed
    desc = RawDescriptor()
    if 0x14 in items:
        desc.id = int.from_bytes(items[0x14], "big")
    desc.name = items.get(0x10, b"")
    desc.description = items.get(0x11, b"")
    desc.numpy_header = items.get(0x15, b"")
    if bug_compat & _BUG_COMPAT_DESCRIPTOR_WIDTHS:
        shape_width, format_width = 8, 4
    else:
        shape_width, format_width = 1 + hab // 8, 1 + id_bytes
    variable = 2 if bug_compat & _BUG_COMPAT_SHAPE_BIT_1 else 1
    raw_shape = items.get(0x12, b"")
    for pos in range(0, len(raw_shape) - shape_width + 1, shape_width):
        field = raw_shape[pos : pos + shape_width]
        desc.shape.append(None if field[0] & variable else int.from_bytes(field[1:], "big"))
    raw_format = items.get(0x13, b"")
    for pos in range(0, len(raw_format) - format_width + 1, format_width):
        field = raw_format[pos : pos + format_width]
        desc.format.append((chr(field[0]), int.from_bytes(field[1:], "big")))
    return desc


def _text(value):
    return value.decode("ascii") if isinstance(value, (bytes, bytearray)) else value


@classmethod
def _descriptor_from_raw(cls, raw_descriptor, flavour):
    """Build a descriptor (or item) from a :class:`RawDescriptor`."""
    dtype = None
    format = None
    order = "C"
    if raw_descriptor.numpy_header:
        header = ast.literal_eval(_text(raw_descriptor.numpy_header))
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError("Numpy header does not have the required keys")
        descr = header["descr"]
        dtype = np.dtype(descr if isinstance(descr, str) else [tuple(f) for f in descr])
        if flavour.bug_compat & _BUG_COMPAT_SWAP_ENDIAN:
            dtype = dtype.newbyteorder()
        order = "F" if header["fortran_order"] else "C"
        shape = tuple(header["shape"])
    else:
        shape = raw_descriptor.shape
        format = raw_descriptor.format
    return cls(
        raw_descriptor.id,
        _text(raw_descriptor.name),
        _text(raw_descriptor.description),
        shape,
        dtype=dtype,
        order=order,
        format=format,
    )


def _elements(shape):
    n = 1
    for dim in shape:
        n *= dim
    return n


def _unpack_bits(data, fields, count):
    """`count` elements of `fields`, unpacked MSB-first from `data`."""
    value = int.from_bytes(data, "big")
    total = len(data) * 8
    pos = 0
    out = []
    for _ in range(count):
        parts = []
        for code, bits in fields:
            raw = (value >> (total - pos - bits)) & ((1 << bits) - 1)
            pos += bits
            if code == "u":
                parts.append(raw)
            elif code == "i":
                parts.append(raw - (1 << bits) if raw >> (bits - 1) else raw)
            elif code == "b":
                parts.append(bool(raw))
            elif code == "c":
                parts.append(bytes([raw]))
            else:  # "f", 32 or 64 bits
                fmt = ">f4" if bits == 32 else ">f8"
                parts.append(np.frombuffer(raw.to_bytes(bits // 8, "big"), fmt)[0])
        out.append(parts[0] if len(parts) == 1 else tuple(parts))
    return out


def _set_from_raw(self, raw_item, new_order="="):
    """Decode a received item (a :class:`spead2.recv.RawItem`) into :attr:`value`."""
    raw = np.frombuffer(memoryview(raw_item), np.uint8)
    fields = self._fields
    dtype = self._numpy_dtype
    if dtype is not None:
        max_elements = raw.shape[0] // dtype.itemsize
        shape = self.dynamic_shape(max_elements)
        elements = _elements(shape)
        if elements > max_elements:
            raise ValueError(f"Item {self.name} has too few elements for shape ({max_elements} < {elements})")
        size = elements * dtype.itemsize
        flat = raw[raw.shape[0] - size :] if raw_item.is_immediate else raw[:size]
        array = flat.view(dtype)
        array = array.astype(dtype.newbyteorder(new_order), casting="equiv", copy=False)
        value = array.reshape(shape, order=self.order)
        if fields == (("c", 8),) and len(shape) == 1:
            value = b"".join(value).decode("ascii")
    else:
        bits = self.itemsize_bits
        max_elements = raw.shape[0] * 8 // bits if bits else 0
        shape = self.dynamic_shape(max_elements)
        elements = _elements(shape)
        if elements > max_elements:
            raise ValueError(f"Item {self.name} has too few elements for shape ({max_elements} < {elements})")
        used = (elements * bits + 7) // 8
        data = bytes(raw[raw.shape[0] - used :] if raw_item.is_immediate else raw[:used])
        if raw_item.is_immediate and used * 8 != elements * bits:
            # Head padding for immediates: drop the leading bits.
            data = (int.from_bytes(data, "big") << (used * 8 - elements * bits)).to_bytes(used + 1, "big")[1:]
        values = _unpack_bits(data, fields, elements)
        if len(fields) == 1:
            element_dtype = np.dtype(object)
        else:
            element_dtype = np.dtype(
                [(f"f{i}", _NUMPY_FIELD_TYPES.get(field, "O")) for i, field in enumerate(fields)]
            )
        array = np.empty(elements, element_dtype)
        for i, v in enumerate(values):
            array[i] = v
        value = array.reshape(shape)
    if len(self.shape) == 0 and isinstance(value, np.ndarray):
        value = value[()]
    self.value = value


def _update(self, heap, new_order="="):
    """Apply a received heap: add its descriptors, then decode its items.

    Returns a dict (name → item) of the items whose value the heap updated.
    """
    flavour = heap.flavour
    for raw_descriptor in heap.get_descriptors():
        self._add_item(Item.from_raw(raw_descriptor, flavour=flavour))
    updated = {}
    for raw_item in heap.get_items():
        if raw_item.id <= _STREAM_CTRL_ID:
            continue  # special items carry no value
        item = self._by_id.get(raw_item.id)
        if item is None:
            _logger.warning("Item with ID %#x received but there is no descriptor", raw_item.id)
            continue
        item.set_from_raw(raw_item, new_order=new_order)
        updated[item.name] = item
    return updated


def heap_flavour(heap):
    return Flavour(4, 64, heap._heap_address_bits, heap._bug_compat)


def heap_descriptors(heap):
    out = []
    for raw_item in heap._get_descriptor_items():
        desc = parse_raw_descriptor(memoryview(raw_item), heap._bug_compat)
        if desc is None:
            _logger.warning("Ignoring malformed descriptor in heap %d", heap.cnt)
        else:
            out.append(desc)
    return out


Descriptor.from_raw = _descriptor_from_raw
Item.set_from_raw = _set_from_raw
ItemGroup.update = _update
_items.RawDescriptor = RawDescriptor
