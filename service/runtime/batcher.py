"""Dynamic batching: requests that arrive close together run as one batch, each caller gets its own rows."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor

import numpy as np

from service.errors import ServiceError, bad_request
from service.tracing import Phases

Feeds = Mapping[str, np.ndarray]
Run = Callable[[Feeds], dict[str, np.ndarray]]


class _Pending:
    __slots__ = ("feeds", "rows", "key", "future", "enqueued", "phases")

    def __init__(self, feeds: Feeds, rows: int, future: asyncio.Future, phases: Phases | None):
        self.feeds = feeds
        self.rows = rows
        # Only requests whose non-batch dims and types agree can be concatenated.
        self.key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(feeds.items()))
        self.future = future
        self.enqueued = time.perf_counter()
        self.phases = phases


class DynamicBatcher:
    """Collects requests of one shape for up to `max_queue_delay_us` (measured from the oldest)
    or until `max_batch_size` rows or a preferred size, concatenates them along axis 0, runs them
    on `executor` and slices the outputs back per request. Requests of another shape wait, in
    order, for a batch of their own. A batch is formed when one of the `instances` is free, so
    requests that arrive meanwhile join it. Past `max_queue_size` waiting requests: 503."""

    def __init__(
        self,
        run: Run,
        executor: Executor,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        preferred_batch_size: list[int],
        instances: int,
        observe_queue: Callable[[float], None],
    ):
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self._delay = max_queue_delay_us / 1e6
        self._max_queue_size = max_queue_size
        self._preferred = frozenset(preferred_batch_size)
        self._slots = asyncio.Semaphore(instances)
        self._observe_queue = observe_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._waiting = 0
        self._deferred: deque[_Pending] = deque()
        self._running: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    def submit(self, feeds: Feeds, phases: Phases | None = None) -> asyncio.Future[dict[str, np.ndarray]]:
        """A future of this request's rows of every output; `phases`, when tracing, gets the times
        its batch started and stopped running."""
        rows = next(iter(feeds.values())).shape[0]
        if rows > self.max_batch_size:
            raise bad_request(f"batch of {rows} rows is larger than the model's max_batch_size {self.max_batch_size}")
        if self._waiting >= self._max_queue_size:
            raise ServiceError(503, f"the model's queue is full ({self._max_queue_size} requests waiting)")
        item = _Pending(feeds, rows, asyncio.get_running_loop().create_future(), phases)
        self._waiting += 1
        self._queue.put_nowait(item)
        return item.future

    async def _next(self, deadline: float) -> _Pending | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                return await asyncio.wait_for(self._queue.get(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return None

    async def _collect(self) -> None:
        while True:
            first = self._deferred.popleft() if self._deferred else await self._queue.get()
            self._waiting -= 1
            if first.future.done():  # its caller gave up (timeout) while it waited
                continue
            # Wait for a free instance before forming the batch: while all are busy, requests pile
            # up in the queue and the next batch takes them all instead of leaving them behind.
            await self._slots.acquire()
            batch = [first]
            # Requests set aside because their shapes differed from an earlier batch's come first.
            for item in list(self._deferred):
                if item.key == first.key and self._fits(batch, item):
                    self._deferred.remove(item)
                    self._take(batch, item)
            deadline = first.enqueued + self._delay
            while self._rows(batch) < self.max_batch_size:
                if self._rows(batch) in self._preferred and self._queue.empty():
                    break  # a preferred size, and nothing more at hand to reach a larger one
                arrived = await self._next(deadline)
                if arrived is None:
                    break
                if arrived.key != first.key:
                    self._deferred.append(arrived)  # another shape: it leads a later batch
                elif self._fits(batch, arrived):
                    self._take(batch, arrived)
                else:
                    self._deferred.append(arrived)
                    break
            task = asyncio.get_running_loop().create_task(self._execute(batch, self._rows(batch)))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    def _rows(batch: list[_Pending]) -> int:
        return sum(item.rows for item in batch)

    def _fits(self, batch: list[_Pending], item: _Pending) -> bool:
        return self._rows(batch) + item.rows <= self.max_batch_size

    def _take(self, batch: list[_Pending], item: _Pending) -> None:
        self._waiting -= 1
        if not item.future.done():
            batch.append(item)

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        try:
            started = time.perf_counter()
            for item in batch:
                self._observe_queue(started - item.enqueued)
            names = batch[0].feeds.keys()
            feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in names}
            traced = [item.phases for item in batch if item.phases is not None]
            for phases in traced:
                phases.started, phases.rows = time.time_ns(), rows
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds)
            except ServiceError:
                if len(batch) == 1:
                    raise
                # One request's data can fail a kernel for the whole batch: each runs alone
                # then, so that the others get their answers and only it gets the error.
                await self._execute_one_by_one(batch)
                return
            finally:
                for phases in traced:
                    phases.ended = time.time_ns()
            bad = [name for name, array in outputs.items() if array.ndim == 0 or array.shape[0] != rows]
            if bad:
                raise ServiceError(
                    500, f"output {bad[0]!r} does not keep the batch dimension; turn dynamic batching off"
                )
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(
                        {name: array[offset : offset + item.rows] for name, array in outputs.items()}
                    )
                offset += item.rows
        except Exception as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._slots.release()

    async def _execute_one_by_one(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for item in batch:
            if item.future.done():  # its caller has gone
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, item.feeds)
            except Exception as error:
                if not item.future.done():
                    item.future.set_exception(error)
            else:
                if not item.future.done():
                    item.future.set_result(outputs)

    async def stop(self) -> None:
        """Stop collecting; requests still waiting (none after a drain) get 503."""
        self._task.cancel()
        await asyncio.gather(self._task, *self._running, return_exceptions=True)
        while self._deferred or not self._queue.empty():
            item = self._deferred.popleft() if self._deferred else self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ServiceError(503, "the model was unloaded"))
