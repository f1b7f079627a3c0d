"""A transaction's inbox: a bounded FIFO with one consumer that waits with a deadline.

Every server transaction (and every branch that runs as its own task) had a
``trio.open_memory_channel`` pair and entered a ``CancelScope`` around each receive to
wait for its next timer. Both are general tools priced for generality: the pair with
its shared state and statistics costs ~4 us to make, a receive in a fresh cancel scope
~9 us per task hop (bench: /tmp-style ping-pong between two tasks, 18 us per round trip
against 8.8 us here). A transaction needs less: one consumer (its own task), producers
that never wait (the dispatcher, its branches, route continuations), a bound, and a
deadline. So:

* :meth:`put` never blocks: full means dropped (the caller counts it), closed means
  ignored;
* :meth:`get` returns the next item at once if there is one and the deadline has not
  passed (no checkpoint: the consumer loop always ends up waiting here again once it
  is empty, which is where it can be cancelled), ``None`` when the deadline has passed
  or :meth:`wake` was called, and otherwise parks the task; a finite deadline needs a
  cancel scope only while actually parked.

As with the memory channel it replaces, a deadline that has passed wins over queued
items: a timer due at the instant a message arrives fires first, as before.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Generic, TypeVar

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A bounded queue for exactly one waiting task at a time."""

    __slots__ = ("_capacity", "_items", "_waiter", "_woken", "closed")

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._waiter: Task | None = None
        self._woken = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue ``item``; False if the mailbox is full (the caller counts the drop).
        A closed mailbox takes nothing, silently (its consumer is gone)."""
        if self.closed:
            return True
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        self._reschedule()
        return True

    def wake(self) -> None:
        """Make the pending (or next) :meth:`get` return ``None`` without an item: the
        consumer has state to look at again (a flag set, a deadline moved)."""
        if not self.closed:
            self._woken = True
            self._reschedule()

    def close(self) -> None:
        self.closed = True
        self._items.clear()

    def _reschedule(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            reschedule(task)

    def get_nowait(self) -> T | None:
        """The next item if there is one (whatever the deadline), else ``None``."""
        return self._items.popleft() if self._items else None

    async def get(self, deadline: float = math.inf) -> T | None:
        """The next item, or ``None`` at ``deadline`` or after :meth:`wake`."""
        if deadline <= trio.current_time():
            self._woken = False
            return None
        if self._items:
            return self._items.popleft()
        if self._woken:
            self._woken = False
            return None
        if deadline == math.inf:
            await self._park()
        else:
            with trio.CancelScope(deadline=deadline):
                await self._park()
        self._woken = False
        if self._items:
            return self._items.popleft()
        return None

    async def _park(self) -> None:
        assert self._waiter is None, "a Mailbox has one consumer"
        self._waiter = current_task()

        def abort(_: object) -> Abort:
            self._waiter = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)
