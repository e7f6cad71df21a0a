"""Prometheus text exposition of what the server does: requests, latency, queue depth, batch sizes."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (method, route, status) -> count
        self.latency: dict[str, list[int]] = {}  # route -> bucket counts (cumulative at render time)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.generating = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            buckets = self.latency.setdefault(route, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
                    break
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def render(self, batcher, registry) -> str:
        lines = ["# HELP sensorium_requests_total HTTP requests by route and status.",
                 "# TYPE sensorium_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'sensorium_requests_total{{method="{method}",route="{_esc(route)}",status="{status}"}} {n}')
            lines += ["# HELP sensorium_request_seconds Request latency.", "# TYPE sensorium_request_seconds histogram"]
            for route, buckets in sorted(self.latency.items()):
                total = 0
                for bound, n in zip(LATENCY_BUCKETS, buckets):
                    total += n
                    lines.append(f'sensorium_request_seconds_bucket{{route="{_esc(route)}",le="{bound}"}} {total}')
                lines.append(f'sensorium_request_seconds_bucket{{route="{_esc(route)}",le="+Inf"}} '
                             f'{self.latency_count[route]}')
                lines.append(f'sensorium_request_seconds_sum{{route="{_esc(route)}"}} {self.latency_sum[route]:.6f}')
                lines.append(f'sensorium_request_seconds_count{{route="{_esc(route)}"}} {self.latency_count[route]}')
        stats = batcher.stats
        lines += [
            "# HELP sensorium_queue_depth Requests waiting for a model.", "# TYPE sensorium_queue_depth gauge",
            f"sensorium_queue_depth {batcher.waiting}",
            "# HELP sensorium_generating Generation requests running.", "# TYPE sensorium_generating gauge",
            f"sensorium_generating {self.generating}",
            "# HELP sensorium_rejected_total Requests refused because the queue was full.",
            "# TYPE sensorium_rejected_total counter", f"sensorium_rejected_total {stats.rejected}",
            "# HELP sensorium_batches_total Forward passes run by the batcher.", "# TYPE sensorium_batches_total counter",
            f"sensorium_batches_total {stats.batches}",
            "# HELP sensorium_batch_size Inputs per forward pass.", "# TYPE sensorium_batch_size histogram",
        ]
        for bound in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            total = sum(n for size, n in stats.batch_sizes.items() if size <= bound)
            lines.append(f'sensorium_batch_size_bucket{{le="{bound}"}} {total}')
        lines += [f'sensorium_batch_size_bucket{{le="+Inf"}} {stats.batches}',
                  f"sensorium_batch_size_sum {stats.batched_inputs}", f"sensorium_batch_size_count {stats.batches}",
                  "# HELP sensorium_models_loaded Models held in memory.", "# TYPE sensorium_models_loaded gauge",
                  f"sensorium_models_loaded {len(registry.loaded())}"]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
