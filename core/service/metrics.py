"""Prometheus metrics (names start with `pupick_`), on a registry of the app's own."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Counters and histograms the app and the workers update; gauges read live from the store at scrape time."""

    def __init__(self, job_counts: Callable[[], dict[str, int]], queue_depth: Callable[[], int],
                 models_loaded: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.micrographs = Counter("pupick_micrographs", "Micrographs picked, by outcome", ["outcome"],
                                   registry=self.registry)
        self.micrograph_seconds = Histogram("pupick_micrograph_seconds", "Seconds to pick one micrograph",
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.job_seconds = Histogram("pupick_job_seconds", "Seconds from submission to the end of a job",
                                     ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.upload_seconds = Histogram("pupick_upload_pick_seconds", "Seconds per /v1/pick/upload request",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rejected = Counter("pupick_rejected_jobs", "Jobs refused by the queue bound, by reason", ["reason"],
                                registry=self.registry)
        self.requests = Counter("pupick_http_requests", "HTTP responses, by status class", ["status"],
                                registry=self.registry)
        self._recent: deque[float] = deque(maxlen=4096)
        self.registry.register(_Live(job_counts, queue_depth, models_loaded, self.rate))

    def picked(self, seconds: float, ok: bool) -> None:
        """Count one micrograph."""
        self.micrographs.labels("done" if ok else "failed").inc()
        if ok:
            self.micrograph_seconds.observe(seconds)
        self._recent.append(time.monotonic())

    def rate(self, window: float = 60.0) -> float:
        """Micrographs per second over the last `window` seconds."""
        now = time.monotonic()
        n = sum(1 for t in self._recent if now - t <= window)
        return n / window


class _Live:
    """Gauges computed when scraped: jobs by state, queue depth, micrographs/s, warm models."""

    def __init__(self, job_counts, queue_depth, models_loaded, rate) -> None:
        self.job_counts, self.queue_depth, self.models_loaded, self.rate = job_counts, queue_depth, models_loaded, rate

    def describe(self):
        return []

    def collect(self):
        jobs = GaugeMetricFamily("pupick_jobs", "Jobs in the store, by state", labels=["state"])
        for state, n in self.job_counts().items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("pupick_queue_depth", "Micrographs queued or running, not yet done",
                                value=self.queue_depth())
        yield GaugeMetricFamily("pupick_micrographs_per_second", "Micrographs picked per second (last minute)",
                                value=self.rate())
        yield GaugeMetricFamily("pupick_models_loaded", "Models warm in the LRU", value=self.models_loaded())
