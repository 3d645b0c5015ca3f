"""Prometheus export of stream, group and ring statistics.

Needs the optional dependency ``prometheus-client`` (``pip install
"spead2[prometheus]"``).  One call registers a collector; every scrape then
reads the live values, so nothing has to be updated by hand::

    import prometheus_client
    import spead2.prometheus

    spead2.prometheus.register(group, name="antenna_feed")
    prometheus_client.start_http_server(8000)   # serves /metrics

Exported, each labelled with ``stream`` (the name given) and, for a group,
``member`` (its index):

* every statistic of the stream or member, built-in and custom, as
  ``spead2_<statistic>_total`` counters for ``COUNTER`` statistics and as
  ``spead2_<statistic>`` gauges for ``MAXIMUM`` ones (a maximum can go back
  down from one stream to the next, so it is not a counter);
* the data and free rings: ``spead2_ring_size`` and ``spead2_ring_capacity``
  (gauges), ``spead2_ring_high_water_mark`` (gauge), and
  ``spead2_ring_blocked_puts_total`` / ``spead2_ring_blocked_gets_total``
  (counters: how often a worker had to wait), labelled ``ring="data"`` or
  ``ring="free"``;
* for a group, the window: ``spead2_group_chunks_in_window`` (gauge),
  ``spead2_group_lossy_flushes_total`` and ``spead2_group_member_waits_total``.
"""

import re

try:
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('spead2.prometheus needs prometheus-client: pip install "spead2[prometheus]"') from exc

import spead2.recv

_PREFIX = "spead2_"


def _metric_name(stat_name):
    """A statistic name as a Prometheus metric name (``mypackage.bad`` -> ``mypackage_bad``)."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", stat_name)
    if name[:1].isdigit():
        name = "_" + name
    return _PREFIX + name


def _members(obj):
    """[(member label or None, stream)] for a stream or a group."""
    if isinstance(obj, spead2.recv.ChunkStreamRingGroup):
        return [(str(i), member) for i, member in enumerate(obj)]
    return [(None, obj)]


class StreamCollector:
    """A Prometheus collector for one stream, group or group member.

    Register it with :func:`register` (or a registry's ``register``).  The
    object is read at every scrape; it must stay alive as long as the
    collector is registered (unregister it before dropping the stream).
    """

    def __init__(self, obj, name):
        if not hasattr(obj, "stats") and not isinstance(obj, spead2.recv.ChunkStreamRingGroup):
            raise TypeError(f"cannot export {type(obj).__name__}: expected a stream, group or group member")
        self._obj = obj
        self._name = str(name)

    def describe(self):
        return []   # metrics depend on the stream's statistics: described at collection

    def collect(self):
        members = _members(self._obj)
        is_group = isinstance(self._obj, spead2.recv.ChunkStreamRingGroup) or any(m is not None for m, _ in members)
        labels = ["stream", "member"] if is_group else ["stream"]
        families = {}

        def family(kind, name, doc):
            key = (kind, name)
            if key not in families:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                families[key] = cls(name, doc, labels=labels)
            return families[key]

        for member, stream in members:
            values = [self._name] + ([member] if is_group else [])
            stats = stream.stats
            for config in stats.config:
                value = stats[config.name]
                if config.mode == spead2.recv.StreamStatConfig.Mode.COUNTER:
                    family("counter", _metric_name(config.name), f"spead2 statistic {config.name}").add_metric(
                        values, value)
                else:
                    family("gauge", _metric_name(config.name), f"spead2 statistic {config.name} (maximum)").add_metric(
                        values, value)
        yield from families.values()
        yield from self._rings()
        if isinstance(self._obj, spead2.recv.ChunkStreamRingGroup):
            yield from self._group()

    def _rings(self):
        owner = self._obj
        if not hasattr(owner, "data_ringbuffer"):
            return
        rings = [("data", owner.data_ringbuffer), ("free", owner.free_ringbuffer)]
        labels = ["stream", "ring"]
        size = GaugeMetricFamily(_PREFIX + "ring_size", "chunks in the ring now", labels=labels)
        capacity = GaugeMetricFamily(_PREFIX + "ring_capacity", "chunks the ring can hold", labels=labels)
        high = GaugeMetricFamily(_PREFIX + "ring_high_water_mark", "most chunks the ring has held", labels=labels)
        puts = CounterMetricFamily(_PREFIX + "ring_blocked_puts", "times a worker found the ring full",
                                   labels=labels)
        gets = CounterMetricFamily(_PREFIX + "ring_blocked_gets", "times a worker found the ring empty",
                                   labels=labels)
        for which, ring in rings:
            values = [self._name, which]
            size.add_metric(values, ring.qsize())
            capacity.add_metric(values, ring.maxsize)
            high.add_metric(values, ring.high_water_mark)
            puts.add_metric(values, ring.blocked_puts)
            gets.add_metric(values, ring.blocked_gets)
        yield from (size, capacity, high, puts, gets)

    def _group(self):
        health = self._obj.health
        labels = ["stream"]
        window = GaugeMetricFamily(_PREFIX + "group_chunks_in_window", "chunks under construction in the group",
                                   labels=labels)
        window.add_metric([self._name], health["chunks_in_window"])
        flushes = CounterMetricFamily(_PREFIX + "group_lossy_flushes",
                                      "times LOSSY eviction made the members let chunks go", labels=labels)
        flushes.add_metric([self._name], health["lossy_flushes"])
        waits = CounterMetricFamily(_PREFIX + "group_member_waits",
                                    "times a member waited for the others to move on", labels=labels)
        waits.add_metric([self._name], health["member_waits"])
        yield from (window, flushes, waits)


def register(obj, *, name, registry=None):
    """Register a collector for `obj` (a stream, group or member) under label
    ``stream=name`` with `registry` (default: prometheus_client's global one).
    Returns the collector (pass it to ``registry.unregister`` to stop)."""
    collector = StreamCollector(obj, name)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


__all__ = ["StreamCollector", "register"]
