from typing import Final

import numba
import scipy

EXTRA_BYTES: Final[int]

class Placement(scipy.LowLevelCallable):
    cfunc: numba.core.ccallback.CFunc
    items: list[int]
    heaps_per_chunk: int
    heap_size: int
    max_heap_extra: int
    def __new__(
        cls,
        cfunc: numba.core.ccallback.CFunc,
        items: list[int],
        heaps_per_chunk: int,
        heap_size: int,
        extra: bool,
    ) -> Placement: ...

def heap_counter(
    *,
    heap_size: int,
    heaps_per_chunk: int,
    cnt_first: int = 1,
    cnt_step: int = 1,
    chunk_id_bias: int = 0,
    extra: bool = False,
) -> Placement: ...
def timestamp_channel(
    *,
    heap_size: int,
    channels: int,
    channel_step: int,
    timestamp_step: int,
    timestamps_per_chunk: int = 1,
    first_timestamp: int = 0,
    timestamp_id: int = 0x1600,
    channel_id: int = 0x4103,
    chunk_id_bias: int = 0,
    extra: bool = False,
) -> Placement: ...
