"""Dynamic batching: concurrent requests for one model and one kind of work become one call of the task.

A request submits its inputs under a key (model, task, the options that must agree); the first request of a
batch waits up to `max_wait_ms` for others with the same key, up to `max_batch` inputs, then the task runs once
over all of them on the model's thread and each request gets its own rows back. Every model has one thread:
its forwards never run two at a time (on a CPU they would share the cores; on a GPU they would share memory).

The queue is bounded: when `queue_size` requests are waiting, a new one is refused at once (429, Retry-After)
rather than waiting past its timeout; it recovers as soon as the queue drains.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sensorium.service.inputs import RequestError


@dataclass
class Job:
    payload: list  # this request's inputs
    future: asyncio.Future
    size: int


@dataclass
class Stats:
    """What /metrics reports of the batcher."""

    batches: int = 0
    batched_inputs: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # inputs per forward -> how many forwards
    rejected: int = 0


class ModelThreads:
    """One worker thread per model: everything that runs a model runs on its thread."""

    def __init__(self):
        self._pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def pool(self, model: str) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if model not in self._pools:
                self._pools[model] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-{model}")
            return self._pools[model]

    async def run(self, model: str, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool(model), fn, *args)

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


class Batcher:
    def __init__(self, threads: ModelThreads, max_batch: int, max_wait_ms: float, queue_size: int,
                 enabled: bool = True):
        self.threads, self.max_batch, self.max_wait = threads, max_batch, max_wait_ms / 1000
        self.queue_size, self.enabled = queue_size, enabled
        self.waiting = 0  # requests submitted and not yet answered
        self.stats = Stats()
        self._queues: dict[tuple, asyncio.Queue] = {}
        self._runners: dict[tuple, asyncio.Task] = {}

    async def submit(self, key: tuple, model: str, payload: list, run: Callable[[list], list]) -> list:
        """This request's results: `run(inputs)` over the inputs of every request batched with it (one list in,
        one result per input out, in order), sliced back to this request's inputs."""
        if self.waiting >= self.queue_size:
            self.stats.rejected += 1
            raise RequestError(f"the server is busy ({self.waiting} requests waiting); try again shortly",
                               status=429, code="queue_full", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            if not self.enabled:
                results = await self.threads.run(model, run, payload)
                self._count(len(payload))
                return results
            future = asyncio.get_running_loop().create_future()
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = asyncio.Queue()
                self._runners[key] = asyncio.create_task(self._runner(key, model, queue, run))
            await queue.put(Job(payload, future, len(payload)))
            return await future
        finally:
            self.waiting -= 1

    async def _runner(self, key: tuple, model: str, queue: asyncio.Queue, run: Callable[[list], list]) -> None:
        while True:
            first = await queue.get()
            jobs, size = [first], first.size
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += job.size
            jobs = [j for j in jobs if not j.future.done()]  # a request cancelled while it waited
            if not jobs:
                continue
            inputs = [x for job in jobs for x in job.payload]
            try:
                results = await self.threads.run(model, run, inputs)
            except BaseException as err:  # noqa: BLE001 -- handed to every request of the batch
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            self._count(len(inputs))
            at = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[at:at + job.size])
                at += job.size

    def _count(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.batched_inputs += size
        self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1

    def close(self) -> None:
        for task in self._runners.values():
            task.cancel()
