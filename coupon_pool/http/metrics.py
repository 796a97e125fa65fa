"""Prometheus metrics: request counts and latencies per route, coupon counters, the MEGADEAL gate,
the consumer groups, the types low on coupons."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..models import CouponType
from ..pool.feeds import FeedStatus
from ..pool.megadeal import GateStatus
from ..pool.upkeep import Memory
from ..results import Stats, WebhookEndpoint

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
        self.latency = LatencyHistogram(
            "coupon_pool_http_request_duration_seconds", "Time to answer an HTTP request",
            ("method", "route", "status"), _BUCKETS,
        )  # fmt: skip
        self.registry.register(self.latency)
        self.lookups_refused = Counter(
            "coupon_pool_failed_lookups_refused",
            "Requests answered 429 too_many_failed_lookups: a caller over its budget of failed lookups",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.observe((method, route, status), seconds)

    def render(
        self,
        stats: Stats,
        gate: GateStatus,
        memory: Memory,
        feeds: FeedStatus,
        low: Sequence[CouponType] = (),  # pool-low events: the types low now
        webhooks: Sequence[WebhookEndpoint] = (),  # the webhook endpoints, when configured
    ) -> bytes:
        """The exposition text: these request metrics, then the pool's state read just now."""
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_Snapshot(stats, gate, memory, feeds))
        snapshot.register(_Low(low))
        if webhooks:
            snapshot.register(_Webhooks(webhooks))
        return generate_latest(self.registry) + generate_latest(snapshot)


class LatencyHistogram(Collector):
    """A histogram with labels, exposed as prometheus_client's ``Histogram`` would expose it
    (the same samples, in the same order), observed for a fraction of its cost.

    ``Histogram.labels(...).observe()`` takes two locks and walks the buckets in Python
    (about 1.2 us); this finds the bucket by bisection and adds to a list (about 0.2 us).
    The app observes only from its event loop's thread, so there is nothing to lock.
    """

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = [*buckets, math.inf]
        self._les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[object, ...], list[float]] = {}  # label values -> counts, then sum

    def observe(self, labels: tuple[object, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.bounds) + 1)
        series[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value: le
        series[-1] += value

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in self._series.items():
            cumulative = list(itertools.accumulate(series[:-1]))
            family.add_metric(
                [str(v) for v in labels], list(zip(self._les, cumulative, strict=True)), series[-1]
            )
        yield family


class _Snapshot(Collector):
    def __init__(self, stats: Stats, gate: GateStatus, memory: Memory, feeds: FeedStatus) -> None:
        self.stats = stats
        self.gate = gate
        self.memory = memory
        self.feeds = feeds

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
        yield from self._feeds()

    def _feeds(self) -> Iterable[Metric]:
        pending = GaugeMetricFamily(
            "coupon_pool_feed_pending", "Events delivered to a group and not acknowledged", labels=["group"]
        )
        age = GaugeMetricFamily(
            "coupon_pool_feed_oldest_unacknowledged_seconds",
            "Age of the oldest event a group has not acknowledged (0: none)",
            labels=["group"],
        )
        for name, (waiting, oldest_s) in self.feeds.groups.items():
            pending.add_metric([name], waiting)
            age.add_metric([name], oldest_s)
        yield pending
        yield age
        yield CounterMetricFamily(
            "coupon_pool_feed_dropped",
            "Audit entries dropped past FEED_MAX_LEN though a consumer group had not acknowledged them",
            value=self.feeds.dropped,
        )


class _Low(Collector):
    """Pool-low events (pool/levels.py): 1 for each type low now, 0 for the others."""

    def __init__(self, low: Sequence[CouponType]) -> None:
        self.low = low

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "coupon_pool_pool_low",
            "1 while the type's available coupons are below its pool-low threshold, else 0",
            labels=["type"],
        )
        for coupon_type in CouponType:
            gauge.add_metric([coupon_type.value], 1 if coupon_type in self.low else 0)
        yield gauge


class _Webhooks(Collector):
    """Each webhook endpoint's counters and state, as Redis holds them for every process
    (pool/deliveries.py: ``status``); only while WEBHOOK_URL is set."""

    COUNTERS = (
        ("batches_delivered", "Batches POSTed and answered 2xx, all processes"),
        ("events_delivered", "Events in those batches"),
        ("events_skipped", "Events acknowledged unsent: their op is not in WEBHOOK_OPS"),
        ("failures", "POSTs answered non-2xx, or failed (connection, timeout)"),
        ("retries", "Batches POSTed again after a failure, each time"),
        ("batches_parked", "Batches parked after their retries ran out"),
    )

    def __init__(self, endpoints: Sequence[WebhookEndpoint]) -> None:
        self.endpoints = endpoints

    def collect(self) -> Iterable[Metric]:
        for name, doc in self.COUNTERS:
            counter = CounterMetricFamily(f"coupon_pool_webhook_{name}", doc, labels=["endpoint"])
            for endpoint in self.endpoints:
                counter.add_metric([endpoint.endpoint], getattr(endpoint, name))
            yield counter
        for name, doc, field in (
            ("parked_batches", "Batches parked now (coupon-pool webhooks redeliver)", "parked"),
            ("oldest_undelivered_seconds", "Age of the oldest event the endpoint has not taken (0: none)",
             "oldest_undelivered_age_s"),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(f"coupon_pool_webhook_{name}", doc, labels=["endpoint"])
            for endpoint in self.endpoints:
                gauge.add_metric([endpoint.endpoint], getattr(endpoint, field))
            yield gauge
