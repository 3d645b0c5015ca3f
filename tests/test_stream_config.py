"""spead2.recv.StreamConfig, StreamStatConfig and StreamStats."""

import copy
from collections.abc import Mapping

import pytest

import spead2
import spead2.recv
from spead2.recv import StreamConfig, StreamStatConfig, StreamStats

CORE_STATS = [
    "heaps",
    "incomplete_heaps_evicted",
    "incomplete_heaps_flushed",
    "packets",
    "batches",
    "max_batch",
    "single_packet_heaps",
    "search_dist",
    "worker_blocked",
]
COUNTER = StreamStatConfig.Mode.COUNTER
MAXIMUM = StreamStatConfig.Mode.MAXIMUM


class TestStreamConfig:
    def test_defaults(self):
        config = StreamConfig()
        assert config.max_heaps == 4 == StreamConfig.DEFAULT_MAX_HEAPS
        assert config.substreams == 1
        assert config.bug_compat == 0
        assert config.memcpy == spead2.MEMCPY_STD
        assert config.stop_on_stop_item is True
        assert config.allow_unsized_heaps is True
        assert config.allow_out_of_order is False
        assert config.stream_id == 0
        assert config.explicit_start is False
        assert [s.name for s in config.stats] == CORE_STATS
        modes = [s.mode for s in config.stats]
        assert modes == [COUNTER] * 5 + [MAXIMUM] + [COUNTER] * 3

    def test_kwargs(self):
        config = StreamConfig(
            max_heaps=9,
            substreams=3,
            bug_compat=spead2.BUG_COMPAT_PYSPEAD_0_5_2,
            memcpy=spead2.MEMCPY_NONTEMPORAL,
            stop_on_stop_item=False,
            allow_unsized_heaps=False,
            allow_out_of_order=True,
            stream_id=77,
            explicit_start=True,
        )
        assert config.max_heaps == 9
        assert config.substreams == 3
        assert config.bug_compat == 7
        assert config.memcpy == spead2.MEMCPY_NONTEMPORAL
        assert config.stop_on_stop_item is False
        assert config.allow_unsized_heaps is False
        assert config.allow_out_of_order is True
        assert config.stream_id == 77
        assert config.explicit_start is True

    def test_setters(self):
        config = StreamConfig()
        config.max_heaps = 2
        config.substreams = 5
        config.allow_out_of_order = True
        config.stream_id = 2**40
        assert (config.max_heaps, config.substreams, config.allow_out_of_order, config.stream_id) == (
            2, 5, True, 2**40)

    def test_memory_allocator(self):
        alloc = spead2.MemoryAllocator()
        config = StreamConfig(memory_allocator=alloc)
        assert config.memory_allocator is alloc

    @pytest.mark.parametrize(
        "name, value",
        [("max_heaps", 0), ("substreams", 0), ("bug_compat", 8), ("bug_compat", 0x10), ("memcpy", 2),
         ("memcpy", -1)],
    )
    def test_invalid(self, name, value):
        with pytest.raises(ValueError):
            StreamConfig(**{name: value})
        config = StreamConfig()
        before = getattr(config, name)
        with pytest.raises(ValueError):
            setattr(config, name, value)
        assert getattr(config, name) == before

    def test_unknown_kwarg(self):
        # TypeError as in the reference; pybind11's message names the keyword
        # and lists the accepted ones (the reference's: "got an unexpected
        # keyword argument", without the name).
        with pytest.raises(TypeError, match=r"max_heap=3"):
            StreamConfig(max_heap=3)

    def test_keyword_only(self):
        with pytest.raises(TypeError):
            StreamConfig(3)

    def test_stats_not_settable_by_kwarg(self):
        with pytest.raises(TypeError):
            StreamConfig(stats=[])

    # Regression (fixed): the StreamConfig constructor accepted any kwarg that named an
    # attribute (py::hasattr in the bindings), so names of methods or
    # class attributes did not give the documented TypeError but an
    # AttributeError from setattr.  Reproduction:
    #     spead2.recv.StreamConfig(add_stat=1)   # AttributeError, expected TypeError
    @pytest.mark.parametrize("name", ["add_stat", "get_stat_index", "next_stat_index", "DEFAULT_MAX_HEAPS"])
    def test_method_names_are_not_kwargs(self, name):
        with pytest.raises(TypeError, match=rf"\b{name}=1"):
            StreamConfig(**{name: 1})

    def test_add_stat(self):
        config = StreamConfig()
        assert config.next_stat_index() == 9
        assert config.add_stat("mine.counter") == 9
        assert config.add_stat("mine.max", StreamStatConfig.Mode.MAXIMUM) == 10
        assert config.next_stat_index() == 11
        assert config.get_stat_index("mine.max") == 10
        assert config.get_stat_index("heaps") == 0
        assert config.get_stat_index("worker_blocked") == 8
        stats = config.stats
        assert stats[9] == StreamStatConfig("mine.counter")
        assert stats[10] == StreamStatConfig("mine.max", MAXIMUM)

    def test_add_stat_keyword(self):
        config = StreamConfig()
        assert config.add_stat(name="kw", mode=MAXIMUM) == 9
        assert config.stats[9].mode == MAXIMUM

    def test_add_stat_duplicate(self):
        config = StreamConfig()
        config.add_stat("x")
        with pytest.raises(ValueError):
            config.add_stat("x")
        with pytest.raises(ValueError):
            config.add_stat("heaps")
        assert config.next_stat_index() == 10

    def test_get_stat_index_unknown(self):
        with pytest.raises(IndexError):
            StreamConfig().get_stat_index("nope")

    def test_stats_copy_on_write(self):
        a = StreamConfig()
        a.add_stat("first")
        b = copy.copy(a)
        b.add_stat("second")
        c = copy.deepcopy(b)
        c.add_stat("third")
        assert [s.name for s in a.stats][9:] == ["first"]
        assert [s.name for s in b.stats][9:] == ["first", "second"]
        assert [s.name for s in c.stats][9:] == ["first", "second", "third"]
        # adding to the original after the copy does not leak into the copy
        a.add_stat("late")
        assert [s.name for s in b.stats][9:] == ["first", "second"]

    def test_stats_list_is_a_copy(self):
        config = StreamConfig()
        stats = config.stats
        stats.append(StreamStatConfig("sneaky"))
        assert len(config.stats) == 9

    def test_copy_keeps_fields(self):
        a = StreamConfig(max_heaps=6, allow_out_of_order=True, stream_id=3)
        b = copy.copy(a)
        b.max_heaps = 1
        assert (b.allow_out_of_order, b.stream_id) == (True, 3)
        assert a.max_heaps == 6


class TestStreamStatConfig:
    def test_construct(self):
        s = StreamStatConfig("name")
        assert s.name == "name"
        assert s.mode == COUNTER
        assert StreamStatConfig("m", MAXIMUM).mode == MAXIMUM
        assert StreamStatConfig(name="k", mode=MAXIMUM).mode == MAXIMUM

    def test_combine(self):
        assert StreamStatConfig("c").combine(3, 4) == 7
        assert StreamStatConfig("m", MAXIMUM).combine(3, 4) == 4
        assert StreamStatConfig("m", MAXIMUM).combine(9, 4) == 9
        assert StreamStatConfig("c").combine(2**63, 2**63 - 1) == 2**64 - 1

    def test_equality(self):
        assert StreamStatConfig("a") == StreamStatConfig("a", COUNTER)
        assert StreamStatConfig("a") != StreamStatConfig("b")
        assert StreamStatConfig("a") != StreamStatConfig("a", MAXIMUM)
        assert not (StreamStatConfig("a") == StreamStatConfig("b"))
        assert StreamStatConfig("a") != "a"


def make_stats(extra=()):
    config = StreamConfig()
    for name, mode in extra:
        config.add_stat(name, mode)
    return StreamStats(config.stats), config


class TestStreamStats:
    def test_default(self):
        stats = StreamStats()
        assert list(stats.keys()) == CORE_STATS
        assert list(stats.values()) == [0] * 9
        assert len(stats) == 9

    def test_mapping_api(self):
        stats, _ = make_stats([("custom", COUNTER)])
        stats["custom"] = 5
        stats[3] = 11
        assert stats["packets"] == 11
        assert stats[9] == 5
        assert "custom" in stats
        assert "nope" not in stats
        assert stats.get("custom") == 5
        assert stats.get("nope") is None
        assert stats.get("nope", 3) == 3
        assert list(stats) == CORE_STATS + ["custom"]
        assert dict(stats.items())["custom"] == 5
        assert stats.values()[9] == 5
        assert len(stats) == 10
        assert isinstance(stats, Mapping)
        assert [c.name for c in stats.config] == CORE_STATS + ["custom"]

    def test_bad_keys(self):
        stats, _ = make_stats()
        with pytest.raises(KeyError):
            stats["nope"]
        with pytest.raises(IndexError):
            stats[9]
        with pytest.raises(KeyError):
            stats["nope"] = 1
        with pytest.raises(IndexError):
            stats[100] = 1

    def test_attributes(self):
        stats, _ = make_stats()
        for i, name in enumerate(CORE_STATS):
            setattr(stats, name, i * 10)
        for i, name in enumerate(CORE_STATS):
            assert getattr(stats, name) == i * 10
            assert stats[name] == i * 10
            assert stats[i] == i * 10

    def test_add(self):
        a, _ = make_stats([("c", COUNTER), ("m", MAXIMUM)])
        b, _ = make_stats([("c", COUNTER), ("m", MAXIMUM)])
        a.heaps, b.heaps = 3, 4
        a.max_batch, b.max_batch = 10, 7
        a["c"], b["c"] = 1, 2
        a["m"], b["m"] = 5, 8
        total = a + b
        assert total.heaps == 7
        assert total.max_batch == 10
        assert total["c"] == 3
        assert total["m"] == 8
        # operands unchanged
        assert a.heaps == 3 and b.heaps == 4

    def test_iadd(self):
        a, _ = make_stats()
        b, _ = make_stats()
        a.packets = 1
        b.packets = 2
        b.max_batch = 9
        original = a
        a += b
        assert a is original
        assert a.packets == 3
        assert a.max_batch == 9
        assert b.packets == 2

    def test_mismatched_configs(self):
        a, _ = make_stats([("x", COUNTER)])
        b, _ = make_stats([("y", COUNTER)])
        c, _ = make_stats()
        with pytest.raises(ValueError):
            a + b
        with pytest.raises(ValueError):
            a + c
        with pytest.raises(ValueError):
            a += c
        d, _ = make_stats([("x", MAXIMUM)])
        with pytest.raises(ValueError):
            a + d

    def test_independent_snapshot(self):
        a, _ = make_stats()
        b = a + StreamStats(a.config)
        b.heaps = 100
        assert a.heaps == 0
