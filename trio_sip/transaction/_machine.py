"""What the four transaction machines share: the table lookup and the timer bookkeeping.

Timers are deadlines (CONVENTIONS §3). A machine holds

* at most one *retransmission* timer (A, E or G): an absolute deadline and the
  interval that led to it; when it fires, the subclass resends and re-arms it with
  the next interval (A doubles; E and G double up to T2);
* any number of *timeouts* (B, D, F, H, I, J, K, L, M): the time each was started.
  Their deadlines are derived from the current :class:`TimerConfig`: computed when
  a timeout starts and again whenever the timer values change, so ``set_timers``
  moves an armed timeout at once (Kamailio's ``t_set_fr`` "updates all branches on
  the fly").

``next_deadline()`` is the earliest of them, ``math.inf`` when none is armed. The
owner asks for it after every input, so it is kept up to date (``_next``) whenever a
timer starts or stops or the timer values change, instead of computed on each call.

Every public method takes ``now`` and ends by firing whatever is due at ``now``
(``_fire_due``). Consequences:

* a zero-length timer (D, I, J, K on a reliable transport) fires within the call
  that started it: the 486 over TCP returns ``[Transmit(ack), PassUp(486),
  Terminated()]`` in one list;
* when the owner returns from any call, ``next_deadline() > now`` or the machine is
  terminated: the owner never has to wait for a deadline in the past;
* an input that arrives after a deadline the owner has not yet serviced is applied
  first, then the overdue timer fires ("input, then timers").

A timeout and a retransmission due at the same instant: the timeout fires first, so
no copy is sent in the very instant the transaction gives up (with T2 == T1, E and
F coincide at 64*T1). A late wake-up (the owner calls ``handle_timer`` well after
the deadline) sends *one* retransmission and moves the timer on along its schedule,
skipping the copies it missed instead of sending them in a burst.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Generic, TypeVar

from .actions import Action, Terminated, Transmit
from .errors import LocalProtocolError, RemoteProtocolError
from .timers import TimerConfig


class FastEnum(Enum):
    """An Enum hashed by identity, for the states and inputs of the machines.

    Every input looks ``(state, input)`` up in the transition table, and
    ``Enum.__hash__`` is Python code (``hash(self._name_)``) run twice per lookup.
    Members are singletons compared by identity, so the identity hash agrees
    with equality and does the same job in C.
    """

    __hash__ = object.__hash__


StateT = TypeVar("StateT", bound=Enum)
InputT = TypeVar("InputT", bound=Enum)


class TransactionMachine(Generic[StateT, InputT]):
    """Base class: a state, a transition table, deadlines, statistics."""

    def __init__(
        self,
        *,
        table: Mapping[tuple[StateT, InputT], StateT],
        initial: StateT,
        terminated: StateT,
        network_inputs: frozenset[InputT],
        timer_inputs: Mapping[str, InputT],
        reliable: bool,
        timers: TimerConfig,
        now: float,
    ) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, not {now!r}")
        self._table = table
        self._state = initial
        self._terminated_state = terminated
        self._network_inputs = network_inputs
        self._timer_inputs = timer_inputs
        #: whether the transport is reliable (TCP, TLS, SCTP, WS): no retransmission
        #: timers then, and D, I, J, K are zero
        self._reliable = reliable
        self._timers = timers
        #: when the machine was created (the owner's clock)
        self.created_at = now
        self._now = now
        #: how many times this machine resent something (statistics)
        self.retransmissions = 0
        #: armed timeouts: name -> start time, and name -> absolute deadline
        #: (start + duration under the current timers and reliability), same order
        self._timeouts: dict[str, float] = {}
        self._deadlines: dict[str, float] = {}
        self._retr_timer = ""
        self._retr_deadline = math.inf
        self._retr_interval = 0.0
        #: the earliest of _deadlines and _retr_deadline (``next_deadline()``)
        self._next = math.inf

    # -- public ------------------------------------------------------------------

    @property
    def state(self) -> StateT:
        return self._state

    @property
    def terminated(self) -> bool:
        return self._state is self._terminated_state

    @property
    def reliable(self) -> bool:
        """Whether the transport is reliable (TCP, TLS, SCTP, WS): no retransmission
        timers then, and D, I, J, K are zero."""
        return self._reliable

    @reliable.setter
    def reliable(self, reliable: bool) -> None:
        self._reliable = reliable
        self._recompute_deadlines()

    @property
    def timers(self) -> TimerConfig:
        """The timer values in force (``set_timers`` changes them)."""
        return self._timers

    @timers.setter
    def timers(self, timers: TimerConfig) -> None:
        self._timers = timers
        self._recompute_deadlines()

    def next_deadline(self) -> float:
        """The earliest armed timer's absolute deadline, or ``math.inf``."""
        return self._next

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now`` (none if called early: that is harmless)."""
        self._advance(now)
        return self._fire_due(now)

    def set_timers(self, timers: TimerConfig, now: float) -> list[Action]:
        """Switch to new timer values (``t_set_retr``, ``t_set_fr`` on a live transaction).

        Armed timeouts keep their start time and take the new duration (so one may
        now be due: it fires in this call). The armed retransmission keeps its
        deadline; the intervals after it follow the new T2 (Kamailio: "takes
        effect after the current interval").
        """
        self._advance(now)
        self.timers = timers
        return self._fire_due(now)

    # -- for subclasses ----------------------------------------------------------

    def _advance(self, now: float) -> None:
        if not now >= self._now:  # also rejects NaN
            raise LocalProtocolError(
                f"time went backwards: {now!r} after {self._now!r}",
                machine=type(self).__name__, state=self._state.name, event="now",
            )
        self._now = now

    def _lookup(self, event: InputT) -> StateT:
        """The next state for ``event`` in the current state, or raise ProtocolError."""
        try:
            return self._table[(self._state, event)]
        except KeyError:
            cls = RemoteProtocolError if event in self._network_inputs else LocalProtocolError
            raise cls(
                f"{type(self).__name__}: no transition for {event.name} in state "
                f"{self._state.name}",
                machine=type(self).__name__, state=self._state.name, event=event.name,
            ) from None

    def _duration(self, timer: str) -> float:
        return self._timers.duration(timer, reliable=self._reliable)

    def _start_timeout(self, timer: str, now: float) -> None:
        restarted = timer in self._deadlines
        self._timeouts[timer] = now
        deadline = self._deadlines[timer] = now + self._duration(timer)
        if restarted:
            self._refresh_next()  # its old deadline may have been the minimum
        elif deadline < self._next:
            self._next = deadline

    def _stop_timeouts(self) -> None:
        self._timeouts.clear()
        self._deadlines.clear()
        self._next = self._retr_deadline

    def _recompute_deadlines(self) -> None:
        """After the timer values or reliability changed: every armed timeout keeps its
        start time and takes its new duration."""
        self._deadlines = {name: started + self._duration(name)
                           for name, started in self._timeouts.items()}
        self._refresh_next()

    def _refresh_next(self) -> None:
        deadline = self._retr_deadline
        for d in self._deadlines.values():
            if d < deadline:
                deadline = d
        self._next = deadline

    def _start_retransmission(self, timer: str, now: float) -> None:
        """Arm timer A, E or G at T1 (only on unreliable transports)."""
        if self._reliable:
            return
        self._retr_timer = timer
        self._retr_interval = self._timers.t1
        self._retr_deadline = now + self._timers.t1
        self._refresh_next()

    def _stop_retransmission(self) -> None:
        self._retr_timer = ""
        self._retr_deadline = math.inf
        self._retr_interval = 0.0
        self._refresh_next()

    def _rearm_retransmission(self, now: float) -> None:
        """After a retransmission timer fired: next deadline on the RFC schedule."""
        interval = self._next_interval(self._retr_interval)
        deadline = self._retr_deadline + interval
        while deadline <= now:  # a late wake-up: skip the copies we missed
            interval = self._next_interval(interval)
            deadline += interval
        self._retr_interval = interval
        self._retr_deadline = deadline
        self._refresh_next()

    def _next_interval(self, interval: float) -> float:
        """The retransmission interval after ``interval`` (A: doubles; E, G: capped)."""
        return min(2 * interval, self._timers.t2)

    def _transmit(self, data: bytes, *, retransmission: bool) -> Transmit:
        if retransmission:
            self.retransmissions += 1
        return Transmit(data, retransmission)

    def _terminate(self) -> list[Action]:
        """Enter Terminated: every timer stops; the owner destroys the machine."""
        self._state = self._terminated_state
        self._stop_timeouts()
        self._stop_retransmission()
        return [Terminated()]

    def _fire_due(self, now: float) -> list[Action]:
        out: list[Action] = []
        # _next > now: nothing is due (the common case: every input ends here)
        while self._next <= now and not self.terminated:
            timer = self._due_timer(now)
            if timer is None:
                break
            if timer != self._retr_timer:
                del self._timeouts[timer]
                del self._deadlines[timer]
                self._refresh_next()
            out += self._on_timer(timer, now)
        return out

    def _due_timer(self, now: float) -> str | None:
        best: tuple[float, int] | None = None
        name: str | None = None
        for timer, deadline in self._deadlines.items():
            key = (deadline, 0)
            if deadline <= now and (best is None or key < best):
                best, name = key, timer
        if self._retr_deadline <= now and (best is None or (self._retr_deadline, 1) < best):
            name = self._retr_timer
        return name

    def _on_timer(self, timer: str, now: float) -> list[Action]:
        """Apply timer ``timer`` firing (a timeout was already disarmed)."""
        raise NotImplementedError

    def _timer_input(self, timer: str) -> InputT:
        return self._timer_inputs[timer]
