"""spead2: a high-performance SPEAD chunking receiver.

The compiled core lives in :mod:`spead2._spead2`; this package re-exports it
and adds what is naturally Python (logging, interpreter-exit handling).
"""

import atexit as _atexit
import logging as _logging

from . import _spead2
from ._spead2 import (  # noqa: F401
    BUG_COMPAT_DESCRIPTOR_WIDTHS,
    BUG_COMPAT_PYSPEAD_0_5_2,
    BUG_COMPAT_SHAPE_BIT_1,
    BUG_COMPAT_SWAP_ENDIAN,
    CTRL_DESCRIPTOR_REISSUE,
    CTRL_DESCRIPTOR_UPDATE,
    CTRL_STREAM_START,
    CTRL_STREAM_STOP,
    DESCRIPTOR_DESCRIPTION_ID,
    DESCRIPTOR_DTYPE_ID,
    DESCRIPTOR_FORMAT_ID,
    DESCRIPTOR_ID,
    DESCRIPTOR_ID_ID,
    DESCRIPTOR_NAME_ID,
    DESCRIPTOR_SHAPE_ID,
    HEAP_CNT_ID,
    HEAP_LENGTH_ID,
    MEMCPY_NONTEMPORAL,
    MEMCPY_STD,
    NULL_ID,
    PAYLOAD_LENGTH_ID,
    PAYLOAD_OFFSET_ID,
    STREAM_CTRL_ID,
    Empty,
    Full,
    InprocQueue,
    MemoryAllocator,
    MemoryPool,
    MmapAllocator,
    Stopped,
    ThreadPool,
)
from ._items import Descriptor, Flavour, Item, ItemGroup  # noqa: F401
from . import _decode  # noqa: F401,E402  (adds ItemGroup.update and friends)
from ._version import __version__  # noqa: F401

_logger = _logging.getLogger(__name__)
_spead2._install_log_sink(_logger)


def set_log_limits(first_logged: int = 5, summary_interval: float = 10.0) -> None:
    """Limit log lines about dropped packets (bad, duplicate, out-of-order...).

    The first `first_logged` packets of each kind are logged one by one, per
    stream (and for the packet decoder); after that they are only counted, and
    a summary of the counts is logged at most every `summary_interval`
    seconds and when the stream stops.  Statistics always count every packet.
    This is not in the reference, which logs every packet.
    """
    _spead2._set_log_limits(int(first_logged), float(summary_interval))


def parse_range_list(ranges: str) -> list:
    """Parse a string like ``"2,3-5,8"`` into ``[2, 3, 4, 5, 8]``."""
    if not ranges:
        return []
    out = []
    for part in ranges.split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            out.extend(range(int(first), int(last) + 1))
        else:
            out.append(int(part))
    return out


@_atexit.register
def _stop_at_exit():
    # Streams are stopped before the interpreter tears down, so no worker
    # thread touches Python objects afterwards.
    _spead2._stop_everything()
