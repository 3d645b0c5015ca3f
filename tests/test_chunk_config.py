"""spead2.recv.ChunkStreamConfig and spead2.recv.Chunk."""

import ctypes
import gc
import weakref

import numpy as np
import pytest

import spead2
import spead2.recv
from spead2.recv import Chunk, ChunkStreamConfig


class TestChunkStreamConfig:
    def test_default_construct(self):
        config = ChunkStreamConfig()
        assert config.items == []
        assert config.max_chunks == ChunkStreamConfig.DEFAULT_MAX_CHUNKS == 2
        assert config.place is None
        assert config.max_heap_extra == 0
        assert config.packet_presence_payload_size == 0

    def test_kwargs(self):
        config = ChunkStreamConfig(items=[1, 0x1000], max_chunks=7, max_heap_extra=16)
        assert config.items == [1, 0x1000]
        assert config.max_chunks == 7
        assert config.max_heap_extra == 16

    def test_unknown_kwarg(self):
        with pytest.raises(TypeError):
            ChunkStreamConfig(max_chunk=3)

    def test_zero_max_chunks(self):
        config = ChunkStreamConfig()
        with pytest.raises(ValueError):
            config.max_chunks = 0
        assert config.max_chunks == 2
        with pytest.raises(ValueError):
            ChunkStreamConfig(max_chunks=0)

    def test_negative_values(self):
        config = ChunkStreamConfig()
        with pytest.raises((TypeError, ValueError, OverflowError)):
            config.max_chunks = -1
        with pytest.raises((TypeError, ValueError, OverflowError)):
            config.max_heap_extra = -1

    def test_items_is_a_copy(self):
        config = ChunkStreamConfig(items=[1, 2])
        items = config.items
        items.append(3)
        assert config.items == [1, 2]
        config.items = [5]
        assert config.items == [5]

    def test_packet_presence(self):
        config = ChunkStreamConfig()
        result = config.enable_packet_presence(512)
        assert config.packet_presence_payload_size == 512
        # chainable, as the reference's tests use it
        assert result.packet_presence_payload_size == 512
        config.disable_packet_presence()
        assert config.packet_presence_payload_size == 0
        with pytest.raises(ValueError):
            config.enable_packet_presence(0)
        assert config.packet_presence_payload_size == 0

    def test_chained_construction(self):
        config = ChunkStreamConfig(max_chunks=3).enable_packet_presence(64)
        assert config.max_chunks == 3
        assert config.packet_presence_payload_size == 64

    def test_set_place_none(self):
        assert ChunkStreamConfig(place=None).place is None
        config = ChunkStreamConfig()
        config.place = None
        assert config.place is None

    def test_set_place_empty_tuple(self):
        with pytest.raises(IndexError):
            ChunkStreamConfig(place=())

    def test_set_place_non_tuple(self):
        with pytest.raises(TypeError):
            ChunkStreamConfig(place=1)
        with pytest.raises(TypeError):
            ChunkStreamConfig(place=[1])

    def test_set_place_non_capsule(self):
        with pytest.raises(TypeError):
            ChunkStreamConfig(place=(1,))


def _capsule(pointer, name):
    """A PyCapsule with the given pointer and (bytes or None) name."""
    make = ctypes.pythonapi.PyCapsule_New
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return make(pointer, name, None)


# Any valid function address will do for tests that never call it.
_DUMMY = ctypes.cast(ctypes.pythonapi.Py_IncRef, ctypes.c_void_p).value
_NAME_PLAIN = ctypes.create_string_buffer(b"void (void *, size_t)")
_NAME_BIND = ctypes.create_string_buffer(b"void (void *, size_t, void *)")
_NAME_BAD = ctypes.create_string_buffer(b"void (void*, size_t)")


class TestPlaceCapsules:
    """Capsule rules, checked with hand-made capsules (no numba needed)."""

    def test_plain_signature(self):
        cap = _capsule(_DUMMY, ctypes.addressof(_NAME_PLAIN))
        value = (cap, "kept")
        config = ChunkStreamConfig(place=value)
        assert config.place is value

    def test_bind_signature(self):
        cap = _capsule(_DUMMY, ctypes.addressof(_NAME_BIND))
        config = ChunkStreamConfig()
        config.place = (cap,)
        assert config.place[0] is cap

    def test_whitespace_matters(self):
        cap = _capsule(_DUMMY, ctypes.addressof(_NAME_BAD))
        with pytest.raises(ValueError):
            ChunkStreamConfig(place=(cap,))

    def test_missing_name(self):
        cap = _capsule(_DUMMY, None)
        with pytest.raises(ValueError):
            ChunkStreamConfig(place=(cap,))

    def test_failed_set_keeps_old_value(self):
        good = (_capsule(_DUMMY, ctypes.addressof(_NAME_PLAIN)),)
        config = ChunkStreamConfig(place=good)
        with pytest.raises(ValueError):
            config.place = (_capsule(_DUMMY, ctypes.addressof(_NAME_BAD)),)
        assert config.place is good

    def test_config_keeps_place_alive(self):
        class Owner:
            """Stands for whatever owns the code (e.g. a JIT-compiled function)."""

        owner = Owner()
        ref = weakref.ref(owner)
        config = ChunkStreamConfig(place=(_capsule(_DUMMY, ctypes.addressof(_NAME_PLAIN)), owner))
        del owner
        gc.collect()
        assert ref() is not None
        del config
        gc.collect()
        assert ref() is None


class TestPlaceLowLevelCallable:
    @pytest.fixture(autouse=True)
    def _need(self):
        pytest.importorskip("numba")
        pytest.importorskip("scipy")

    def test_set_place_bad_signature(self, callbacks):
        import scipy

        llc = scipy.LowLevelCallable(callbacks["place_plain"].ctypes, signature="void (void)")
        with pytest.raises(ValueError):
            ChunkStreamConfig(place=llc)

    def test_set_place_plain(self, place_plain_llc):
        config = ChunkStreamConfig(place=place_plain_llc)
        assert config.place == place_plain_llc

    def test_set_place_bind(self, make_place_bind):
        bound = make_place_bind(2, 9)
        config = ChunkStreamConfig()
        config.place = bound.llc
        assert config.place == bound.llc


class TestChunk:
    def test_default_construct(self):
        chunk = Chunk()
        assert chunk.chunk_id == -1
        assert chunk.stream_id == 0
        assert chunk.present is None
        assert chunk.data is None
        assert chunk.extra is None

    def test_kwargs(self):
        present = np.zeros(3, np.uint8)
        data = bytearray(20)
        chunk = Chunk(chunk_id=5, stream_id=3, present=present, data=data, extra=memoryview(bytearray(8)))
        assert chunk.chunk_id == 5
        assert chunk.stream_id == 3
        assert chunk.present is present
        assert chunk.data is data

    def test_unknown_kwarg(self):
        with pytest.raises(TypeError):
            Chunk(dat=np.zeros(3, np.uint8))

    def test_set_properties(self):
        chunk = Chunk()
        data = np.zeros(100, np.uint8)
        present = np.zeros(4, np.uint8)
        extra = np.zeros(2, np.int64)
        before = [ref_count(x) for x in (data, present, extra)]
        chunk.chunk_id = 123
        chunk.stream_id = 7
        chunk.data = data
        chunk.present = present
        chunk.extra = extra
        assert chunk.chunk_id == 123
        assert chunk.stream_id == 7
        assert chunk.data is data
        assert chunk.present is present
        assert chunk.extra is extra
        chunk.data = None
        chunk.present = None
        chunk.extra = None
        assert chunk.data is None and chunk.present is None and chunk.extra is None
        assert [ref_count(x) for x in (data, present, extra)] == before

    def test_buffers_released(self):
        data = np.zeros(16, np.uint8)
        ref = weakref.ref(data)
        chunk = Chunk(data=data)
        del data
        gc.collect()
        assert ref() is not None
        del chunk
        gc.collect()
        assert ref() is None

    def test_non_buffer(self):
        with pytest.raises(TypeError):
            Chunk(data=1)
        chunk = Chunk()
        with pytest.raises(TypeError):
            chunk.present = "not a buffer"
        assert chunk.present is None

    def test_read_only_buffer(self):
        with pytest.raises(BufferError):
            Chunk(data=b"read only")
        arr = np.zeros(4, np.uint8)
        arr.flags.writeable = False
        with pytest.raises((BufferError, ValueError)):
            Chunk(present=arr)

    def test_non_contiguous_buffer(self):
        with pytest.raises((BufferError, ValueError)):
            Chunk(data=np.zeros(20, np.uint8)[::2])

    def test_subclass_attributes(self):
        class MyChunk(Chunk):
            def __init__(self, label, **kwargs):
                super().__init__(**kwargs)
                self.label = label

        chunk = MyChunk("x", chunk_id=3)
        assert chunk.label == "x"
        assert chunk.chunk_id == 3
        assert isinstance(chunk, Chunk)

    def test_chunk_id_range(self):
        chunk = Chunk()
        chunk.chunk_id = 2**63 - 1
        assert chunk.chunk_id == 2**63 - 1
        with pytest.raises((TypeError, OverflowError)):
            chunk.chunk_id = 2**63


def ref_count(obj):
    import sys

    return sys.getrefcount(obj)


def test_stream_stat_indices():
    idx = spead2.recv.stream_stat_indices
    assert [idx.HEAPS, idx.INCOMPLETE_HEAPS_EVICTED, idx.INCOMPLETE_HEAPS_FLUSHED, idx.PACKETS,
            idx.BATCHES, idx.MAX_BATCH, idx.SINGLE_PACKET_HEAPS, idx.SEARCH_DIST,
            idx.WORKER_BLOCKED] == list(range(9))


def test_module_constants():
    assert (spead2.NULL_ID, spead2.HEAP_CNT_ID, spead2.HEAP_LENGTH_ID, spead2.PAYLOAD_OFFSET_ID,
            spead2.PAYLOAD_LENGTH_ID, spead2.DESCRIPTOR_ID, spead2.STREAM_CTRL_ID) == tuple(range(7))
    assert spead2.CTRL_STREAM_STOP == 2
    assert issubclass(spead2.Stopped, Exception)
    assert issubclass(spead2.Empty, Exception)
    assert issubclass(spead2.Full, Exception)
