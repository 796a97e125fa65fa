"""Prometheus metrics: request counts and latencies per route, coupon counters, the MEGADEAL gate."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..pool.megadeal import GateStatus
from ..pool.upkeep import Memory
from ..results import Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# No "_created" timestamp series beside every counter and histogram: noise for a scraper.
disable_created_metrics()  # type: ignore[no-untyped-call]
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class RequestMetrics:
    """This process's request latency histograms, on a registry of its own.

    A histogram's ``_count`` is the request count, so there is no separate counter.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "coupon_pool_http_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route", "status"], buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.lookups_refused = Counter(
            "coupon_pool_failed_lookups_refused",
            "Requests answered 429 too_many_failed_lookups: a caller over its budget of failed lookups",
            registry=self.registry,
        )
        # labels() takes a lock and builds a key per call: look each series up once.
        self._series: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self.latency.labels(method, route, str(status))
        series.observe(seconds)

    def render(self, stats: Stats, gate: GateStatus, memory: Memory) -> bytes:
        """The exposition text: these request metrics, then the pool's state read just now."""
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_Snapshot(stats, gate, memory))
        return generate_latest(self.registry) + generate_latest(snapshot)


class _Snapshot(Collector):
    def __init__(self, stats: Stats, gate: GateStatus, memory: Memory) -> None:
        self.stats = stats
        self.gate = gate
        self.memory = memory

    def collect(self) -> Iterable[Metric]:
        for name, doc in (
            ("created", "Coupons uploaded"),
            ("allocated", "Coupon usages allocated"),
            ("used", "Coupon usages redeemed"),
            ("purged", "Expired coupons deleted unused"),
        ):
            counter = CounterMetricFamily(f"coupon_pool_coupons_{name}", doc, labels=["type"])
            for coupon_type, counts in self.stats.types.items():
                counter.add_metric([coupon_type.value], getattr(counts, name))
            yield counter
        available = GaugeMetricFamily(
            "coupon_pool_coupons_available", "Unexpired coupons with a free usage", labels=["type"]
        )
        for coupon_type, counts in self.stats.types.items():
            available.add_metric([coupon_type.value], counts.available)
        yield available
        for name, doc, value in (
            ("slots_in_use", "MEGADEAL slots held, all processes", self.gate.slots),
            ("queued", "MEGADEAL requests queued, all processes", self.gate.queued),
            ("waiting", "MEGADEAL requests waiting in this process", self.gate.waiting),
            (
                "admitted_last_second",
                "MEGADEAL admissions in the last second, all processes",
                self.gate.admitted_last_s,
            ),
        ):
            yield GaugeMetricFamily(f"coupon_pool_megadeal_{name}", doc, value=value)
        for name, doc, value in (
            ("used_memory_bytes", "Memory Redis uses", self.memory.used),
            ("maxmemory_bytes", "Redis's maxmemory (0: no limit)", self.memory.max),
        ):
            yield GaugeMetricFamily(f"coupon_pool_redis_{name}", doc, value=value)
