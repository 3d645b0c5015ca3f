"""Helpers for writing place callbacks with numba."""

from numba import types
from numba.extending import intrinsic


@intrinsic
def intp_to_voidptr(typingctx, src):
    """Convert an integer (``intp``/``uintp``) holding an address to ``void *``.

    Numba records cannot hold pointers, so the pointer fields of
    :data:`spead2.recv.numba.chunk_place_data` are integers; this turns one
    back into a pointer, e.g. for
    ``numba.carray(intp_to_voidptr(data[0].items), n, dtype=np.int64)``.
    """
    if src not in (types.intp, types.uintp):
        return None
    sig = types.voidptr(src)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return sig, codegen
