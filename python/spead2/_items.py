"""Protocol flavours, item descriptors, items and item groups.

Everything here is pure Python (plus numpy), so the module can be used — and
tested — without the compiled core.  The sending API in :mod:`spead2.send`
builds on it.

Wire encodings produced here (SPEAD-64-XX, with ``XX`` the heap address bits
and ``A = XX / 8`` the address width in bytes):

* A descriptor (:meth:`Descriptor.to_raw`) is itself a complete one-packet
  SPEAD heap: the 8-byte header, then 64-bit big-endian item pointers
  ``HEAP_CNT = 1``, ``HEAP_LENGTH = L``, ``PAYLOAD_OFFSET = 0``,
  ``PAYLOAD_LENGTH = L`` and ``DESCRIPTOR_ID_ID = id`` (immediates), then the
  addressed items NAME, DESCRIPTION, FORMAT, SHAPE and (numpy items only)
  DTYPE, whose bytes follow in that order as the payload of length ``L``.
* FORMAT is a sequence of ``code (1 byte) + bit length (8 - A bytes,
  big-endian)``; it is empty for numpy items.
* SHAPE is a sequence of ``flag (1 byte) + size (A bytes, big-endian)``;
  a variable dimension has flag 1 and size 0.
* DTYPE is the numpy header text
  ``{'descr': <descr>, 'fortran_order': <bool>, 'shape': <tuple>}`` with no
  padding.
* Bug-compatibility flags change this: ``BUG_COMPAT_DESCRIPTOR_WIDTHS`` makes
  the format length 3 bytes and the shape size 7 bytes whatever the flavour,
  ``BUG_COMPAT_SHAPE_BIT_1`` marks variable dimensions with 2 instead of 1,
  and ``BUG_COMPAT_SWAP_ENDIAN`` writes the dtype with the opposite byte
  order.
"""

import numbers
import operator
import struct

import numpy as np

try:  # numpy >= 2 keeps it here too, but be explicit about where it lives
    from numpy.lib.format import dtype_to_descr as _dtype_to_descr
except ImportError:  # pragma: no cover - very old numpy
    from numpy.lib.npyio import format as _npformat

    _dtype_to_descr = _npformat.dtype_to_descr

# Protocol constants, repeated here so that this module does not need the
# compiled extension (they are the values of the spead2.*_ID constants).
_HEAP_CNT_ID = 0x01
_HEAP_LENGTH_ID = 0x02
_PAYLOAD_OFFSET_ID = 0x03
_PAYLOAD_LENGTH_ID = 0x04
_DESCRIPTOR_NAME_ID = 0x10
_DESCRIPTOR_DESCRIPTION_ID = 0x11
_DESCRIPTOR_SHAPE_ID = 0x12
_DESCRIPTOR_FORMAT_ID = 0x13
_DESCRIPTOR_ID_ID = 0x14
_DESCRIPTOR_DTYPE_ID = 0x15

_BUG_COMPAT_DESCRIPTOR_WIDTHS = 1
_BUG_COMPAT_SHAPE_BIT_1 = 2
_BUG_COMPAT_SWAP_ENDIAN = 4

_SPEAD_MAGIC = 0x53
_SPEAD_VERSION = 4

#: First ID handed out by :meth:`ItemGroup.add_item` when ``id`` is ``None``.
_FIRST_AUTO_ID = 0x1000


class Flavour:
    """A variant of the SPEAD protocol.

    Only SPEAD-64-XX is supported: `version` must be 4, `item_pointer_bits`
    64, and `heap_address_bits` a multiple of 8 strictly between 0 and 64.
    `bug_compat` is a combination of the ``spead2.BUG_COMPAT_*`` flags.
    Flavours are immutable, compare equal when all four values are equal, and
    are hashable.
    """

    __slots__ = ("_version", "_item_pointer_bits", "_heap_address_bits", "_bug_compat")

    def __init__(self, version=4, item_pointer_bits=64, heap_address_bits=40, bug_compat=0):
        version = operator.index(version)
        item_pointer_bits = operator.index(item_pointer_bits)
        heap_address_bits = operator.index(heap_address_bits)
        bug_compat = operator.index(bug_compat)
        if version != 4:
            raise ValueError("Version is not supported")
        if item_pointer_bits != 64:
            raise ValueError("item_pointer_bits not supported")
        if heap_address_bits <= 0 or heap_address_bits >= item_pointer_bits:
            raise ValueError("heap_address_bits out of range")
        if heap_address_bits % 8 != 0:
            raise ValueError("heap_address_bits not a multiple of 8")
        if bug_compat < 0:
            raise ValueError("bug_compat must be non-negative")
        self._version = version
        self._item_pointer_bits = item_pointer_bits
        self._heap_address_bits = heap_address_bits
        self._bug_compat = bug_compat

    @property
    def version(self):
        """SPEAD version (always 4)."""
        return self._version

    @property
    def item_pointer_bits(self):
        """Bits in an item pointer (always 64)."""
        return self._item_pointer_bits

    @property
    def heap_address_bits(self):
        """Bits used for heap addresses and immediate values."""
        return self._heap_address_bits

    @property
    def bug_compat(self):
        """Bug-compatibility flags (``spead2.BUG_COMPAT_*``)."""
        return self._bug_compat

    def _key(self):
        return (self._version, self._item_pointer_bits, self._heap_address_bits, self._bug_compat)

    def __eq__(self, other):
        if not isinstance(other, Flavour):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other):
        if not isinstance(other, Flavour):
            return NotImplemented
        return self._key() != other._key()

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return (Flavour, self._key())

    def __repr__(self):
        return "Flavour(version={}, item_pointer_bits={}, heap_address_bits={}, bug_compat={})".format(*self._key())


# Format fields that have an exact numpy equivalent.  When every field of a
# format has one, values are converted with numpy (fast); otherwise they are
# bit-packed by hand.
_NUMPY_FIELD_TYPES = {
    ("u", 8): ">u1",
    ("u", 16): ">u2",
    ("u", 32): ">u4",
    ("u", 64): ">u8",
    ("i", 8): ">i1",
    ("i", 16): ">i2",
    ("i", 32): ">i4",
    ("i", 64): ">i8",
    ("f", 32): ">f4",
    ("f", 64): ">f8",
    ("c", 8): "S1",
    ("b", 8): "?",
}


def _normalise_format(format):
    """Validate a format list; returns a tuple of ``(code, bits)`` pairs."""
    fields = []
    for entry in format:
        code, length = entry
        if isinstance(code, bytes):
            code = code.decode("ascii")
        if not isinstance(code, str) or len(code) != 1:
            raise ValueError(f"illegal format code {code!r}")
        length = operator.index(length)
        if length < 0:
            raise ValueError("negative-length field")
        if length == 0:
            raise ValueError("zero-length field (bug_compat mismatch?)")
        if code in ("u", "i", "b"):
            pass
        elif code == "f":
            if length not in (32, 64):
                raise ValueError(f"illegal format ({code}, {length})")
        elif code == "c":
            if length != 8:
                raise ValueError(f"illegal format ({code}, {length})")
        else:
            raise ValueError(f"illegal format ({code}, {length})")
        fields.append((code, length))
    if not fields:
        raise ValueError("empty format")
    return tuple(fields)


def _format_numpy_dtype(fields):
    """The numpy dtype equivalent to a format, or ``None`` if there is none."""
    parts = [_NUMPY_FIELD_TYPES.get(field) for field in fields]
    if any(part is None for part in parts):
        return None
    if len(parts) == 1:
        return np.dtype(parts[0])
    return np.dtype([(f"f{i}", part) for i, part in enumerate(parts)])


def _normalise_dim(dim):
    if dim is None:
        return None
    if isinstance(dim, numbers.Integral) or hasattr(dim, "__index__"):
        value = operator.index(dim)
    else:
        raise TypeError(f"shape elements must be integers or None, not {type(dim).__name__}")
    if value < 0:
        raise ValueError("shape elements must be non-negative (use None for a variable dimension)")
    return value


def _to_ascii(text):
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    return str(text).encode("ascii")


def _item_pointer(immediate, item_id, value, heap_address_bits):
    """One big-endian 64-bit item pointer."""
    if item_id < 0 or item_id >= 1 << (63 - heap_address_bits):
        raise ValueError("Item ID out of range")
    if value < 0 or value >= 1 << heap_address_bits:
        raise ValueError("Item value does not fit in the heap address bits")
    raw = (int(bool(immediate)) << 63) | (item_id << heap_address_bits) | value
    return raw.to_bytes(8, "big")


class Descriptor:
    """Metadata for a SPEAD item.

    The rules (each violation raises :exc:`ValueError`):

    - at most one element of `shape` can be ``None`` (a variable dimension);
    - exactly one of `dtype` and `format` is given;
    - a `dtype` item cannot have variable dimensions, nor a dtype holding
      Python objects or of size zero;
    - with `format`, `order` must be ``'C'``; `order` is ``'C'`` or ``'F'``.

    Parameters
    ----------
    id : int
        SPEAD item ID
    name : str
        Short item name, suitable as a key
    description : str
        Long item description
    shape : sequence
        Dimensions, ``None`` for a variable-size dimension
    dtype : numpy data type, optional
        Data type, or ``None`` if `format` is used instead
    order : {'C', 'F'}
        Storage order of numpy arrays
    format : list of pairs, optional
        ``(code, bits)`` fields of a generic (non-numpy) type, codes being
        ``u`` (unsigned), ``i`` (signed), ``f`` (float, 32 or 64 bits),
        ``c`` (character, 8 bits) and ``b`` (boolean).
    """

    def __init__(self, id, name, description, shape, dtype=None, order="C", format=None):
        shape = tuple(_normalise_dim(dim) for dim in shape)
        unknown = sum(1 for dim in shape if dim is None)
        if unknown > 1:
            raise ValueError("Cannot have multiple unknown dimensions")
        if dtype is not None and format is not None:
            raise ValueError("Only one of dtype and format can be specified")
        if dtype is None and format is None:
            raise ValueError("One of dtype and format must be specified")
        if order not in ("C", "F"):
            raise ValueError("Order must be 'C' or 'F'")
        if dtype is not None:
            dtype = np.dtype(dtype)
            if unknown:
                raise ValueError("Cannot have unknown dimensions when using numpy descriptor")
            if dtype.hasobject:
                raise ValueError("Cannot use dtype that has reference-counted objects")
            if dtype.itemsize == 0:
                raise ValueError("Cannot use zero-sized dtype")
            self._fields = None
            self._numpy_dtype = dtype
        else:
            if order != "C":
                raise ValueError("When specifying format, order must be 'C'")
            self._fields = _normalise_format(format)
            self._numpy_dtype = _format_numpy_dtype(self._fields)
        self.id = None if id is None else operator.index(id)
        self.name = name
        self.description = description
        self.shape = shape
        self.dtype = dtype
        self.order = order
        self.format = None if self._fields is None else list(self._fields)

    # -- shape helpers ---------------------------------------------------
    @property
    def itemsize_bits(self):
        """Number of bits per element."""
        if self.dtype is not None:
            return self.dtype.itemsize * 8
        return sum(bits for _, bits in self._fields)

    def is_variable_size(self):
        """Whether any dimension is variable (``None``)."""
        return any(dim is None for dim in self.shape)

    def allow_immediate(self):
        """Whether a small enough value may be sent as an immediate item.

        Variable-size items never are (the receiver could not tell the true
        size), nor are items whose elements are not a whole number of bytes
        (where the padding goes is not agreed on).  Whether a value is small
        enough depends on the flavour and is decided when it is added to a
        heap.
        """
        return not self.is_variable_size() and self.itemsize_bits % 8 == 0

    def compatible_shape(self, shape):
        """Whether `shape` matches this descriptor's (possibly variable) shape."""
        shape = tuple(shape)
        if len(shape) != len(self.shape):
            return False
        return all(want is None or want == got for want, got in zip(self.shape, shape))

    def dynamic_shape(self, max_elements):
        """The shape, with the variable dimension (if any) as large as
        `max_elements` elements allow."""
        known = 1
        for dim in self.shape:
            if dim is not None:
                known *= dim
        if known == 0:
            fill = 0
        else:
            fill = max_elements // known
        return tuple(fill if dim is None else dim for dim in self.shape)

    def _descriptor_key(self):
        return (self.id, self.name, self.description, self.shape, self.dtype, self.order, self._fields)

    # -- encoding ----------------------------------------------------------
    def _numpy_header(self, flavour):
        dtype = self.dtype
        if flavour.bug_compat & _BUG_COMPAT_SWAP_ENDIAN:
            dtype = dtype.newbyteorder()
        return "{{'descr': {!r}, 'fortran_order': {!r}, 'shape': {!r}}}".format(
            _dtype_to_descr(dtype), self.order == "F", tuple(self.shape)
        )

    def _raw_format(self, flavour):
        if self._fields is None:
            return b""
        if flavour.bug_compat & _BUG_COMPAT_DESCRIPTOR_WIDTHS:
            width = 3
        else:
            width = (flavour.item_pointer_bits - flavour.heap_address_bits) // 8
        out = bytearray()
        for code, bits in self._fields:
            if bits >= 1 << (8 * width):
                raise ValueError(f"field length {bits} does not fit in the descriptor")
            out += code.encode("ascii")
            out += bits.to_bytes(width, "big")
        return bytes(out)

    def _raw_shape(self, flavour):
        if flavour.bug_compat & _BUG_COMPAT_DESCRIPTOR_WIDTHS:
            width = 7
        else:
            width = flavour.heap_address_bits // 8
        variable_flag = 2 if flavour.bug_compat & _BUG_COMPAT_SHAPE_BIT_1 else 1
        out = bytearray()
        for dim in self.shape:
            if dim is None:
                out.append(variable_flag)
                out += bytes(width)
            else:
                if dim >= 1 << (8 * width):
                    raise ValueError(f"dimension {dim} does not fit in the descriptor")
                out.append(0)
                out += dim.to_bytes(width, "big")
        return bytes(out)

    def to_raw(self, flavour):
        """Encode the descriptor for `flavour`.

        Returns the bytes of a complete single-packet SPEAD heap describing
        the item; this is the value of a ``DESCRIPTOR_ID`` item.
        """
        if self.id is None:
            raise ValueError("Descriptor has no ID")
        bits = flavour.heap_address_bits
        if self.id < 0 or self.id >= 1 << (flavour.item_pointer_bits - 1 - bits):
            raise ValueError("Item ID out of range")
        addressed = [
            (_DESCRIPTOR_NAME_ID, _to_ascii(self.name)),
            (_DESCRIPTOR_DESCRIPTION_ID, _to_ascii(self.description)),
            (_DESCRIPTOR_FORMAT_ID, self._raw_format(flavour)),
            (_DESCRIPTOR_SHAPE_ID, self._raw_shape(flavour)),
        ]
        if self.dtype is not None:
            addressed.append((_DESCRIPTOR_DTYPE_ID, self._numpy_header(flavour).encode("ascii")))
        payload_length = sum(len(data) for _, data in addressed)
        pointers = [
            _item_pointer(True, _HEAP_CNT_ID, 1, bits),
            _item_pointer(True, _HEAP_LENGTH_ID, payload_length, bits),
            _item_pointer(True, _PAYLOAD_OFFSET_ID, 0, bits),
            _item_pointer(True, _PAYLOAD_LENGTH_ID, payload_length, bits),
            _item_pointer(True, _DESCRIPTOR_ID_ID, self.id, bits),
        ]
        offset = 0
        for item_id, data in addressed:
            pointers.append(_item_pointer(False, item_id, offset, bits))
            offset += len(data)
        header = struct.pack(
            ">BBBBHH",
            _SPEAD_MAGIC,
            _SPEAD_VERSION,
            (flavour.item_pointer_bits - bits) // 8,
            bits // 8,
            0,
            len(pointers),
        )
        return header + b"".join(pointers) + b"".join(data for _, data in addressed)

    def __repr__(self):
        kind = f"dtype={self.dtype!r}" if self.dtype is not None else f"format={self.format!r}"
        ident = "None" if self.id is None else hex(self.id)
        return f"<{type(self).__name__} id={ident} name={self.name!r} shape={self.shape!r} {kind}>"


def _split_chars(value, ndim):
    """Turn strings in a ``c``-format value into sequences of 1-byte chars."""
    if isinstance(value, str):
        value = value.encode("ascii")
    if isinstance(value, (bytes, bytearray)):
        if ndim == 0:
            return bytes(value)
        return [bytes([c]) for c in value]
    if ndim > 0 and isinstance(value, (list, tuple)):
        return [_split_chars(v, ndim - 1) for v in value]
    return value


def _flatten(value, shape, where=()):
    """Leaf elements of a nested sequence `value` of (possibly variable) `shape`.

    Returns ``(elements, actual_shape)``.
    """
    if not shape:
        return [value], ()
    if isinstance(value, (str, bytes)) and len(shape) == 1:
        value = list(value)
    try:
        n = len(value)
    except TypeError:
        raise ValueError(f"Value has too few dimensions (expected {len(where) + len(shape)})") from None
    want = shape[0]
    if want is not None and n != want:
        raise ValueError(f"Value has length {n} along axis {len(where)}, expected {want}")
    elements = []
    sub_shape = None
    for i, sub in enumerate(value):
        sub_elements, got = _flatten(sub, shape[1:], where + (i,))
        if sub_shape is None:
            sub_shape = got
        elif got != sub_shape:
            raise ValueError("Value is ragged")
        elements.extend(sub_elements)
    if sub_shape is None:
        sub_shape = tuple(0 if d is None else d for d in shape[1:])
    return elements, (n,) + sub_shape


def _field_bits(code, bits, v):
    """The unsigned integer encoding of one field value."""
    if code == "u":
        v = operator.index(v)
        if v < 0 or v >= 1 << bits:
            raise ValueError(f"value {v} does not fit in {bits} unsigned bits")
        return v
    if code == "i":
        v = operator.index(v)
        if v < -(1 << (bits - 1)) or v >= 1 << (bits - 1):
            raise ValueError(f"value {v} does not fit in {bits} signed bits")
        return v & ((1 << bits) - 1)
    if code == "b":
        return 1 if v else 0
    if code == "c":
        if isinstance(v, str):
            v = v.encode("ascii")
        if isinstance(v, (bytes, bytearray, np.bytes_)):
            if len(v) != 1:
                raise ValueError(f"expected a single character, not {v!r}")
            return v[0]
        v = operator.index(v)
        if v < 0 or v >= 256:
            raise ValueError(f"character code {v} out of range")
        return v
    if code == "f":
        if bits == 32:
            return struct.unpack(">I", struct.pack(">f", float(v)))[0]
        return struct.unpack(">Q", struct.pack(">d", float(v)))[0]
    raise ValueError(f"unknown format code {code!r}")  # pragma: no cover - rejected earlier


class Item(Descriptor):
    """A SPEAD item: a :class:`Descriptor` with a value and a version number.

    The version starts at 1 and increases by one on every assignment to
    :attr:`value`, which is how a :class:`spead2.send.ItemGroup` knows what
    has changed.

    Parameters
    ----------
    value : object, optional
        Initial value
    """

    def __init__(self, id, name, description, shape, dtype=None, order="C", format=None, value=None):
        super().__init__(id, name, description, shape, dtype=dtype, order=order, format=format)
        self._value = value
        self.version = 1

    @property
    def value(self):
        """Current value (assigning increments :attr:`version`)."""
        return self._value

    @value.setter
    def value(self, new_value):
        # As in the reference: None is never a value (an item without one
        # starts out as None, but cannot be set back to it).
        if new_value is None:
            raise ValueError("Item value cannot be set to None")
        self._value = new_value
        self.version += 1

    def _check_shape(self, shape):
        if not self.compatible_shape(shape):
            raise ValueError(f"Value has shape {tuple(shape)}, expected {self.shape}")

    def _to_array(self, value):
        dtype = self._numpy_dtype
        if self._fields is not None and dtype.kind == "S":
            value = _split_chars(value, len(self.shape))
        if isinstance(value, np.ndarray) and value.dtype == dtype:
            array = value
        else:
            array = np.asarray(value, dtype=dtype)
        self._check_shape(array.shape)
        if self.order == "F":
            array = array.T
        return np.ascontiguousarray(array)

    def _bit_pack(self, value):
        fields = self._fields
        elements, shape = _flatten(value, self.shape)
        self._check_shape(shape)
        out = bytearray()
        acc = 0
        nacc = 0
        single = len(fields) == 1
        for element in elements:
            if single:
                parts = (element,)
            else:
                parts = tuple(element)
                if len(parts) != len(fields):
                    raise ValueError(f"expected {len(fields)} fields per element, got {len(parts)}")
            for (code, bits), part in zip(fields, parts):
                acc = (acc << bits) | _field_bits(code, bits, part)
                nacc += bits
                while nacc >= 8:
                    nacc -= 8
                    out.append((acc >> nacc) & 0xFF)
                acc &= (1 << nacc) - 1
        if nacc:
            out.append((acc << (8 - nacc)) & 0xFF)
        return out

    def to_buffer(self):
        """The bytes to send for the current value, as a buffer-protocol object.

        numpy items give a C-contiguous array in the item's dtype (byte order
        included) laid out in the item's order.  Format items give their
        fields packed big-endian, most significant bit first, each element
        immediately after the previous one and the whole padded with zero
        bits to a whole number of bytes.

        Raises
        ------
        ValueError
            if the value is ``None`` or its shape does not match
        """
        value = self._value
        if value is None:
            raise ValueError("Cannot send a value of None")
        if self._numpy_dtype is not None:
            return self._to_array(value)
        return self._bit_pack(value)

    def __repr__(self):
        return super().__repr__()[:-1] + f" version={self.version}>"


def _normalise_key(key):
    if isinstance(key, str):
        return key, None
    try:
        return None, operator.index(key)
    except TypeError:
        raise KeyError(key) from None


class ItemGroup:
    """A collection of items, indexable by item ID or by name.

    When a new item's descriptor is identical to that of an existing item
    with the same ID and name, the existing item is kept (and given the new
    item's value, if it has one).  Otherwise any existing items with the same
    name or the same ID are removed and the new item is added with a version
    higher than theirs, so that consumers checking versions see the change.
    """

    def __init__(self):
        self._by_id = {}
        self._by_name = {}

    def _remove_item(self, item):
        del self._by_id[item.id]
        del self._by_name[item.name]

    def _add_item(self, item):
        old_by_id = self._by_id.get(item.id)
        old_by_name = self._by_name.get(item.name)
        if (
            old_by_id is not None
            and old_by_id is old_by_name
            and old_by_id._descriptor_key() == item._descriptor_key()
        ):
            if item.value is not None:
                old_by_id.value = item.value
            return old_by_id
        removed = []
        for old in (old_by_id, old_by_name):
            if old is not None and all(old is not r for r in removed):
                removed.append(old)
        for old in removed:
            self._remove_item(old)
        if removed:
            item.version = max(old.version for old in removed) + 1
        self._by_id[item.id] = item
        self._by_name[item.name] = item
        return item

    def _free_id(self):
        item_id = _FIRST_AUTO_ID
        while item_id in self._by_id:
            item_id += 1
        return item_id

    def add_item(self, id, name, description, shape, dtype=None, order="C", format=None, value=None):
        """Add an item (built with :class:`Item`) and return it.

        If `id` is ``None``, the smallest unused ID from 0x1000 upwards is
        used.  See the class documentation for name or ID collisions.
        """
        if id is None:
            id = self._free_id()
        item = Item(id, name, description, shape, dtype=dtype, order=order, format=format, value=value)
        return self._add_item(item)

    def __getitem__(self, key):
        name, item_id = _normalise_key(key)
        if name is not None:
            return self._by_name[name]
        try:
            return self._by_id[item_id]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key):
        try:
            name, item_id = _normalise_key(key)
        except KeyError:
            return False
        if name is not None:
            return name in self._by_name
        return item_id in self._by_id

    def __len__(self):
        return len(self._by_name)

    def __iter__(self):
        return iter(self._by_name)

    def keys(self):
        """Item names."""
        return self._by_name.keys()

    def ids(self):
        """Item IDs."""
        return self._by_id.keys()

    def values(self):
        """The items."""
        return self._by_name.values()

    def items(self):
        """``(name, item)`` pairs."""
        return self._by_name.items()

    def __repr__(self):
        return f"<{type(self).__name__} {list(self._by_name)!r}>"


__all__ = ["Descriptor", "Flavour", "Item", "ItemGroup"]
