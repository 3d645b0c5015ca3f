from typing import List, Optional, Sequence

__version__: str

NULL_ID: int
HEAP_CNT_ID: int
HEAP_LENGTH_ID: int
PAYLOAD_OFFSET_ID: int
PAYLOAD_LENGTH_ID: int
DESCRIPTOR_ID: int
STREAM_CTRL_ID: int
DESCRIPTOR_NAME_ID: int
DESCRIPTOR_DESCRIPTION_ID: int
DESCRIPTOR_SHAPE_ID: int
DESCRIPTOR_FORMAT_ID: int
DESCRIPTOR_ID_ID: int
DESCRIPTOR_DTYPE_ID: int
CTRL_STREAM_START: int
CTRL_DESCRIPTOR_REISSUE: int
CTRL_STREAM_STOP: int
CTRL_DESCRIPTOR_UPDATE: int
BUG_COMPAT_DESCRIPTOR_WIDTHS: int
BUG_COMPAT_SHAPE_BIT_1: int
BUG_COMPAT_SWAP_ENDIAN: int
BUG_COMPAT_PYSPEAD_0_5_2: int
MEMCPY_STD: int
MEMCPY_NONTEMPORAL: int

class Stopped(Exception): ...
class Empty(Exception): ...
class Full(Exception): ...

class ThreadPool:
    def __init__(self, threads: int = ..., affinity: Sequence[int] = ...) -> None: ...
    @staticmethod
    def set_affinity(core: int) -> None: ...
    def stop(self) -> None: ...
    @property
    def num_threads(self) -> int: ...

class InprocQueue:
    def __init__(self) -> None: ...
    def add_packet(self, packet: bytes | bytearray | memoryview) -> None: ...
    def stop(self) -> None: ...

class MemoryAllocator:
    def __init__(self) -> None: ...

def parse_range_list(ranges: str) -> List[int]: ...
