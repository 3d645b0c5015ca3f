"""The configuration constructors take keyword arguments only, each declared
once with its default (the reference's take ``**kwargs``): the defaults shown
by ``help()`` are the values a default-constructed object has, every keyword
sets its attribute, and a positional or unknown argument raises
:exc:`TypeError`, as in the reference."""

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.recv.place
import spead2.send
from signatures import KEYWORD_ONLY, runtime_signatures

recv = spead2.recv
send = spead2.send

#: class -> {keyword: a value other than the default}
CLASSES = {
    recv.StreamConfig: dict(
        max_heaps=7, substreams=3, bug_compat=spead2.BUG_COMPAT_PYSPEAD_0_5_2, memcpy=spead2.MEMCPY_NONTEMPORAL,
        memory_allocator=spead2.MemoryAllocator(), stop_on_stop_item=False, allow_unsized_heaps=False,
        allow_out_of_order=True, stream_id=12, explicit_start=True),
    recv.RingStreamConfig: dict(heaps=9, contiguous_only=False, incomplete_keep_payload_ranges=True),
    recv.ChunkStreamConfig: dict(items=[1, 2, 0x1600], max_chunks=5,
                                 place=spead2.recv.place.heap_counter(heap_size=64, heaps_per_chunk=4),
                                 max_heap_extra=16),
    recv.Chunk: dict(chunk_id=42, stream_id=3, present=np.zeros(4, np.uint8), data=bytearray(16),
                     extra=np.zeros(2, np.int64)),
    recv.ChunkStreamGroupConfig: dict(max_chunks=6, eviction_mode=recv.ChunkStreamGroupConfig.EvictionMode.LOSSLESS),
    recv.UdpIbvConfig: dict(endpoints=[("239.1.2.3", 7148)], interface_address="10.0.0.1", buffer_size=1 << 20,
                            max_size=1500, comp_vector=-1, max_poll=3),
    send.StreamConfig: dict(max_packet_size=9000, rate=1e6, burst_size=1000, max_heaps=8, burst_rate_ratio=1.5,
                            rate_method=send.RateMethod.SW),
}
IDS = [f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for cls in CLASSES]


def init_signature(cls):
    (sig,) = runtime_signatures(cls.__init__, in_class=True)
    return sig


@pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)
def test_every_argument_is_keyword_only_with_a_default(cls):
    sig = init_signature(cls)
    assert [p.name for p in sig] == list(CLASSES[cls])
    assert all(p.kind == KEYWORD_ONLY and p.default is not None for p in sig)


@pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)
def test_declared_defaults_are_the_defaults(cls):
    obj = cls()
    for p in init_signature(cls):
        value = getattr(obj, p.name)
        if isinstance(value, (bool, int, float, str, list)) or value is None:
            assert repr(value) == p.default, p.name
        else:  # an enum member: <Mode.X: n>
            assert f"{type(value).__name__}.{value.name}" in p.default, p.name


@pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)
def test_each_keyword_sets_its_attribute(cls):
    for name, value in CLASSES[cls].items():
        obj = cls(**{name: value})
        got = getattr(obj, name)
        if isinstance(value, list):
            assert list(got) == [tuple(v) if isinstance(v, tuple) else v for v in value], name
        elif isinstance(value, (bool, int, float, str)) or hasattr(value, "name"):
            assert got == value, name
        else:
            assert got is value, name


@pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)
def test_positional_argument_is_refused(cls):
    first = next(iter(CLASSES[cls].values()))
    with pytest.raises(TypeError):
        cls(first)


@pytest.mark.parametrize("cls", list(CLASSES), ids=IDS)
def test_unknown_keyword_is_refused(cls):
    with pytest.raises(TypeError, match=r"no_such_option=1"):
        cls(no_such_option=1)


@pytest.mark.parametrize(
    "cls, kwargs, error",
    [
        (recv.StreamConfig, dict(max_heaps=0), ValueError),
        (recv.StreamConfig, dict(max_heaps=-1), TypeError),
        (recv.StreamConfig, dict(max_heaps="4"), TypeError),
        (recv.StreamConfig, dict(memory_allocator=object()), TypeError),
        (recv.StreamConfig, dict(bug_compat=0x100), ValueError),
        (recv.RingStreamConfig, dict(heaps=0), ValueError),
        (recv.ChunkStreamConfig, dict(max_chunks=0), ValueError),
        (recv.ChunkStreamConfig, dict(place="not a tuple"), TypeError),
        (recv.Chunk, dict(data=b"read-only"), (TypeError, ValueError, BufferError)),
        (recv.ChunkStreamGroupConfig, dict(max_chunks=0), ValueError),
        (recv.ChunkStreamGroupConfig, dict(eviction_mode=1), TypeError),
        (recv.UdpIbvConfig, dict(max_size=0), ValueError),
        (recv.UdpIbvConfig, dict(max_poll=0), ValueError),
        (recv.UdpIbvConfig, dict(endpoints=[("239.1.2.3", 70000)]), TypeError),
        (send.StreamConfig, dict(max_packet_size=10), ValueError),
        (send.StreamConfig, dict(burst_rate_ratio=0.5), ValueError),
        (send.StreamConfig, dict(rate_method="SW"), TypeError),
    ],
)
def test_bad_values_are_refused(cls, kwargs, error):
    with pytest.raises(error):
        cls(**kwargs)


def test_udp_ibv_config_zero_buffer_size_means_default():
    assert recv.UdpIbvConfig(buffer_size=0).buffer_size == recv.UdpIbvConfig.DEFAULT_BUFFER_SIZE
