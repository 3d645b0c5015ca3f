"""Numba description of :c:struct:`chunk_place_data`, the argument of place callbacks."""

from numba import types

try:
    _size_t = types.size_t
except AttributeError:  # very old numba
    _size_t = types.uintp

#: The fields, in the exact C order (the struct is 80 bytes on LP64).  Pointers
#: are typed as integers; use :func:`spead2.numba.intp_to_voidptr` to follow them.
chunk_place_data = types.Record.make_c_struct(
    [
        ("packet", types.intp),
        ("packet_size", _size_t),
        ("items", types.intp),
        ("chunk_id", types.int64),
        ("heap_index", _size_t),
        ("heap_offset", _size_t),
        ("batch_stats", types.intp),
        ("extra", types.intp),
        ("extra_offset", _size_t),
        ("extra_size", _size_t),
    ]
)
