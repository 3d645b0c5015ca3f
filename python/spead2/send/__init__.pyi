import enum
import socket
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal, overload

import spead2
from spead2._items import Descriptor, Flavour, Item
from spead2._items import ItemGroup as _BaseItemGroup

_Choice = Literal["stale", "all", "none"]

class Heap:
    def __init__(self, flavour: Flavour = ...) -> None: ...
    @property
    def flavour(self) -> Flavour: ...
    @property
    def repeat_pointers(self) -> bool: ...
    @repeat_pointers.setter
    def repeat_pointers(self, value: bool) -> None: ...
    def add_item(self, item: Item) -> None: ...
    def add_descriptor(self, descriptor: Descriptor) -> None: ...
    def add_start(self) -> None: ...
    def add_end(self) -> None: ...

class HeapGenerator:
    def __init__(
        self,
        item_group: _BaseItemGroup,
        descriptor_frequency: int | None = None,
        flavour: Flavour = ...,
    ) -> None: ...
    def add_to_heap(
        self,
        heap: Heap,
        descriptors: _Choice = "stale",
        data: _Choice = "stale",
        item_group: _BaseItemGroup | None = None,
    ) -> Heap: ...
    def get_heap(self, descriptors: _Choice = "stale", data: _Choice = "stale") -> Heap: ...
    def get_start(self) -> Heap: ...
    def get_end(self) -> Heap: ...

class ItemGroup(_BaseItemGroup, HeapGenerator):
    def __init__(self, descriptor_frequency: int | None = None, flavour: Flavour = ...) -> None: ...

class RateMethod(enum.Enum):
    SW = 0
    HW = 1
    AUTO = 2

class GroupMode(enum.Enum):
    ROUND_ROBIN = 0
    SERIAL = 1

class StreamConfig:
    DEFAULT_MAX_PACKET_SIZE: ClassVar[int]
    DEFAULT_BURST_SIZE: ClassVar[int]
    DEFAULT_MAX_HEAPS: ClassVar[int]
    DEFAULT_BURST_RATE_RATIO: ClassVar[float]
    DEFAULT_RATE_METHOD: ClassVar[RateMethod]
    max_packet_size: int
    rate: float
    burst_size: int
    max_heaps: int
    burst_rate_ratio: float
    rate_method: RateMethod
    @property
    def burst_rate(self) -> float: ...
    def __init__(
        self,
        *,
        max_packet_size: int = 1472,
        rate: float = 0.0,
        burst_size: int = 65536,
        max_heaps: int = 4,
        burst_rate_ratio: float = 1.05,
        rate_method: RateMethod = RateMethod.AUTO,
    ) -> None: ...

class HeapReference:
    cnt: int
    substream_index: int
    rate: float
    def __init__(self, heap: Heap, *, cnt: int = -1, substream_index: int = 0, rate: float = -1.0) -> None: ...
    @property
    def heap(self) -> Heap: ...

class HeapReferenceList:
    def __init__(self, heaps: Sequence[HeapReference]) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, slice: slice) -> HeapReferenceList: ...

class PacketGenerator:
    def __init__(self, heap: Heap, cnt: int, max_packet_size: int) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...


class Stream:
    def send_heap(self, heap: Heap, cnt: int = -1, substream_index: int = 0, rate: float = -1.0) -> int: ...
    @overload
    def send_heaps(self, heaps: HeapReferenceList, mode: GroupMode) -> int: ...
    @overload
    def send_heaps(self, heaps: Sequence[HeapReference], mode: GroupMode) -> int: ...
    def set_cnt_sequence(self, next: int, step: int) -> None: ...
    def flush(self) -> None: ...
    @property
    def num_substreams(self) -> int: ...

class BytesStream(Stream):
    def __init__(self, thread_pool: spead2.ThreadPool, config: StreamConfig = ...) -> None: ...
    def getvalue(self) -> bytes: ...

class InprocStream(Stream):
    def __init__(
        self, thread_pool: spead2.ThreadPool, queues: Sequence[spead2.InprocQueue], config: StreamConfig = ...
    ) -> None: ...
    @property
    def queues(self) -> Sequence[spead2.InprocQueue]: ...

_EndpointList = Sequence[tuple[str, int]]

class UdpStream(Stream):
    DEFAULT_BUFFER_SIZE: ClassVar[int]
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        buffer_size: int = 524288,
        interface_address: str = "",
        *,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig,
        buffer_size: int,
        ttl: int,
        *,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        buffer_size: int = 524288,
        *,
        ttl: int,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig,
        buffer_size: int,
        ttl: int,
        interface_address: str,
        *,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        buffer_size: int = 524288,
        *,
        ttl: int,
        interface_address: str,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig,
        buffer_size: int,
        ttl: int,
        interface_index: int,
        *,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        buffer_size: int = 524288,
        *,
        ttl: int,
        interface_index: int,
        allow_gso: bool = True,
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        socket: socket.socket,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        *,
        allow_gso: bool = True,
    ) -> None: ...
    @property
    def using_gso(self) -> bool: ...

class UdpIbvConfig:
    DEFAULT_BUFFER_SIZE: ClassVar[int]
    DEFAULT_MAX_POLL: ClassVar[int]

    endpoints: _EndpointList
    interface_address: str
    buffer_size: int
    ttl: int
    comp_vector: int
    max_poll: int
    memory_regions: list

    def __init__(
        self,
        *,
        endpoints: _EndpointList = [],
        interface_address: str = "",
        buffer_size: int = 524288,
        ttl: int = 1,
        comp_vector: int = 0,
        max_poll: int = 10,
        memory_regions: list = [],
    ) -> None: ...

class UdpIbvStream(Stream):
    @overload
    def __init__(
        self, thread_pool: spead2.ThreadPool, config: StreamConfig, udp_ibv_config: UdpIbvConfig
    ) -> None: ...
    @overload
    def __init__(
        self, thread_pool: spead2.ThreadPool, config: StreamConfig = ..., *, udp_ibv_config: UdpIbvConfig
    ) -> None: ...

class TcpStream(Stream):
    DEFAULT_BUFFER_SIZE: ClassVar[int]
    @overload
    def __init__(
        self, thread_pool: spead2.ThreadPool, socket: socket.socket, config: StreamConfig = ...
    ) -> None: ...
    @overload
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        endpoints: _EndpointList,
        config: StreamConfig = ...,
        buffer_size: int = 212992,
        interface_address: str = "",
        *,
        connect_timeout: float | None = None,
    ) -> None: ...

class PcapFileStream(Stream):
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        filename: str,
        endpoints: Sequence[tuple[str, int]],
        config: StreamConfig = ...,
        source: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None: ...
