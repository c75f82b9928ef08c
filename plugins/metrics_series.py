"""Where the metrics plugin records: one small interface, two implementations.

A single process keeps its values in plain dicts (label values -> value, or bucket counts and sum) and
exposes them through a collector at scrape time: recording a request takes no lock and scans no
bucket list. Multiprocess mode needs prometheus-client's own metric objects, whose values live in the
mmap files every worker's scrape adds up. Both expose the same text: names, help, labels, buckets,
``_total``, ``_count`` and ``_sum`` samples; no ``_created`` ones (the metrics plugin turns them off
in prometheus-client, see ``disable_created``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString


@dataclass(frozen=True, slots=True, eq=False)
class Spec:
    """One metric: name (a counter's without ``_total``), help, label names and, for a histogram,
    its bucket bounds (empty for a counter)."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


class Cell(Protocol):
    """The value of one label combination: a counter's ``inc`` or a histogram's ``observe``."""

    def inc(self, amount: float = 1.0) -> None: ...

    def observe(self, value: float) -> None: ...


class Series(Protocol):
    """What ``Metrics.observe`` records into: the ``cell`` of some label values, kept by the caller
    (one dict lookup for many requests), or a counter's ``inc`` or a histogram's ``observe`` at once."""

    def cell(self, labels: tuple[str, ...]) -> Cell: ...

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None: ...

    def observe(self, labels: tuple[str, ...], value: float) -> None: ...


def disable_created() -> None:
    """No ``_created`` series: they double the lines of /metrics and dashboards never read them."""
    disable_created_metrics()


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value, as prometheus-client's
        self.sum += value


class MemorySeries:
    """A counter or histogram in a dict keyed by label values; ``collect`` builds its family."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.bounds = (*spec.buckets, math.inf)
        self.values: dict[tuple[str, ...], Any] = {}  # _Counter or _Histogram

    def cell(self, labels: tuple[str, ...]) -> Any:
        found = self.values.get(labels)
        if found is None:
            found = self.values[labels] = _Histogram(self.bounds) if self.spec.buckets else _Counter()
        return found

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.cell(labels).inc(amount)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.cell(labels).observe(value)

    def collect(self) -> Metric:
        spec = self.spec
        name = spec.name
        if not spec.buckets:
            family = Metric(name, spec.help, "counter")
            for labels, counter in list(self.values.items()):
                family.add_sample(f"{name}_total", dict(zip(spec.labels, labels, strict=True)), counter.value)
            return family
        family = Metric(name, spec.help, "histogram")
        les = [floatToGoString(bound) for bound in self.bounds]
        for labels, histogram in list(self.values.items()):
            names = dict(zip(spec.labels, labels, strict=True))
            total = 0.0
            for le, count in zip(les, histogram.counts, strict=True):
                total += count
                family.add_sample(f"{name}_bucket", {**names, "le": le}, total)
            family.add_sample(f"{name}_count", names, total)
            family.add_sample(f"{name}_sum", names, histogram.sum)
        return family


class MemoryCollector:
    """Exposes in-memory series, then ``gauge`` (name, help) read from ``value()``, at each scrape."""

    def __init__(self, series: Iterable[MemorySeries], gauge: tuple[str, str], value: Callable[[], int]) -> None:
        self.series = list(series)
        self.gauge = gauge
        self.value = value

    def collect(self) -> list[Metric]:
        families = [series.collect() for series in self.series]
        name, documentation = self.gauge
        gauge = Metric(name, documentation, "gauge")
        gauge.add_sample(name, {}, float(self.value()))
        return [*families, gauge]


class PrometheusSeries:
    """A prometheus-client ``Counter`` or ``Histogram`` with its label children looked up once
    (``labels()`` validates and locks: 4-5 µs)."""

    def __init__(self, spec: Spec, registry: CollectorRegistry) -> None:
        if spec.buckets:
            self.metric: Any = Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
        else:
            self.metric = Counter(spec.name, spec.help, spec.labels, registry=registry)
        self.children: dict[tuple[str, ...], Any] = {}

    def cell(self, labels: tuple[str, ...]) -> Any:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = self.metric.labels(*labels)
        return found

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.cell(labels).inc(amount)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        self.cell(labels).observe(value)
