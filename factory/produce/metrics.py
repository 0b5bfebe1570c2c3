"""The production pool's Ray metrics: samples and shards committed, samples dropped by gate, actor
restarts, the run's samples per second and each shard's seconds.

They are recorded on the driver, where every commit record and every actor replacement passes
(factory.produce.pool), and Ray's metrics agent on the driver's node exports them in Prometheus format
on its metrics export port (`ray start --metrics-export-port`; on KubeRay the pods' `metrics` port,
which k8s/monitoring scrapes). Ray prefixes each name with `ray_`; every series carries the run id.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

# Seconds a shard may take, from a tiny phantom shard to a large one of a GPU generator.
SHARD_SECONDS_BOUNDARIES = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]


class PoolMetrics:
    """The metrics of one production run (this invocation of it: counters start at zero when a run resumes)."""

    def __init__(self, run_id: str):
        from ray.util.metrics import Counter, Gauge, Histogram

        run = ("run_id",)
        self.samples = Counter("medsynth_produce_samples", "samples written into committed shards", run)
        self.shards = Counter("medsynth_produce_shards_committed", "shards committed (tar and commit record)", run)
        self.dropped = Counter("medsynth_produce_samples_dropped", "samples dropped, by the gate that dropped them",
                               ("run_id", "gate"))
        self.restarts = Counter("medsynth_produce_actor_restarts", "production actors that died and were replaced", run)
        self.rate = Gauge("medsynth_produce_samples_per_second",
                          "samples committed per second since this invocation of the run started", run)
        self.shard_seconds = Histogram("medsynth_produce_shard_seconds", "seconds each shard took to write",
                                       SHARD_SECONDS_BOUNDARIES, run)
        for metric in (self.samples, self.shards, self.dropped, self.restarts, self.rate, self.shard_seconds):
            metric.set_default_tags({"run_id": run_id})
        self.started = time.monotonic()
        self.written = 0

    def committed(self, record: Mapping[str, Any]) -> None:
        """One shard's commit record, as it reaches the driver."""
        self.shards.inc()
        if record["count"]:  # Ray's counters refuse a zero increment
            self.samples.inc(record["count"])
        for gate, count in record.get("dropped", {}).items():
            if count:
                self.dropped.inc(count, tags={"gate": gate})
        if "seconds" in record:
            self.shard_seconds.observe(record["seconds"])
        self.written += record["count"]
        self.rate.set(self.written / max(time.monotonic() - self.started, 1e-6))

    def restarted(self) -> None:
        self.restarts.inc()
