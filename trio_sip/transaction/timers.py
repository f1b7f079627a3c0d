"""RFC 3261 transaction timers (Table 4 of §17, §A) plus RFC 6026's L and M.

All values are seconds. A transaction takes one :class:`TimerConfig`; per-transaction
overrides (Kamailio's ``t_set_retr(t1, t2)``, ``t_set_fr``) are a derived copy made
with :meth:`TimerConfig.with_`, handed to the machine at creation or later through
its ``set_timers``.

======  =====================================  =============================
Timer   RFC 3261 Table 4 / RFC 6026 §8.11       here
======  =====================================  =============================
T1      500 ms default (RTT estimate)          ``t1``
T2      4 s (max non-INVITE retransmit gap)    ``t2``
T4      5 s (max time a message lives)         ``t4``
A       initially T1, doubles (ICT, UDP)       ``t1`` (no cap)
B       64*T1 (ICT timeout in Calling)         ``b`` or 64*T1
D       > 32 s UDP, 0 reliable (ICT Completed) ``d``, 0 reliable
E       initially T1, doubles to T2 (NICT)     ``t1``, capped at ``t2``
F       64*T1 (NICT timeout)                   ``f`` or 64*T1
G       initially T1, doubles to T2 (IST)      ``t1``, capped at ``t2``
H       64*T1 (IST wait for ACK)               ``h`` or 64*T1
I       T4 UDP, 0 reliable (IST Confirmed)     ``t4``, 0 reliable
J       64*T1 UDP, 0 reliable (NIST Completed) ``j`` or 64*T1, 0 reliable
K       T4 UDP, 0 reliable (NICT Completed)    ``t4``, 0 reliable
L       64*T1 (IST Accepted, RFC 6026)         ``l`` or 64*T1
M       64*T1 (ICT Accepted, RFC 6026)         ``m`` or 64*T1
======  =====================================  =============================

Timer C (§16.6 step 11, > 3 min) and Kamailio's fr / fr_inv / wt are *transaction
user* timers: the proxy core runs them, not these machines. An explicit ``d`` or ``j``
is how the runtime applies a shorter linger such as Kamailio's ``wt`` (5 s); the
zero-on-reliable rule still wins over it (§17.1.1.2, §17.2.2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: the timers whose duration :meth:`TimerConfig.duration` knows (A, E and G are
#: retransmission intervals derived from T1/T2, not durations)
TIMEOUT_TIMERS: Final = frozenset("BDFHIJKLM")


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Transaction timer values in seconds; ``None`` means the RFC default (64*T1)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Timer D on unreliable transports ("at least 32 seconds", §17.1.1.2)
    d: float = 32.0
    b: float | None = None
    f: float | None = None
    h: float | None = None
    j: float | None = None
    l: float | None = None  # noqa: E741 -- RFC 6026 names it L
    m: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t1) and self.t1 > 0):
            raise ValueError(f"timer T1 must be a positive number of seconds, not {self.t1!r}")
        if not (math.isfinite(self.t2) and self.t2 >= self.t1):
            raise ValueError(f"timer T2 ({self.t2!r}) must be finite and at least T1 ({self.t1!r})")
        for name in ("t4", "d", "b", "f", "h", "j", "l", "m"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"timer {name} must be >= 0 seconds, not {value!r}")

    def with_(self, **changes: float | None) -> TimerConfig:
        """A copy with some values changed: ``timers.with_(t1=0.1, t2=1.0)``.

        Unknown names raise ``TypeError``; invalid values raise ``ValueError``.
        """
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- the RFC defaults ------------------------------------------------------

    @property
    def _sixty_four_t1(self) -> float:
        return 64 * self.t1

    @property
    def timer_b(self) -> float:
        return self._sixty_four_t1 if self.b is None else self.b

    @property
    def timer_d(self) -> float:
        """Timer D on an unreliable transport (0 on reliable ones)."""
        return self.d

    @property
    def timer_f(self) -> float:
        return self._sixty_four_t1 if self.f is None else self.f

    @property
    def timer_h(self) -> float:
        return self._sixty_four_t1 if self.h is None else self.h

    @property
    def timer_i(self) -> float:
        """Timer I on an unreliable transport (0 on reliable ones)."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Timer J on an unreliable transport (0 on reliable ones)."""
        return self._sixty_four_t1 if self.j is None else self.j

    @property
    def timer_k(self) -> float:
        """Timer K on an unreliable transport (0 on reliable ones)."""
        return self.t4

    @property
    def timer_l(self) -> float:
        return self._sixty_four_t1 if self.l is None else self.l

    @property
    def timer_m(self) -> float:
        return self._sixty_four_t1 if self.m is None else self.m

    def duration(self, timer: str, *, reliable: bool) -> float:
        """How long timeout ``timer`` ("B", "D", "F", "H", "I", "J", "K", "L", "M") runs.

        D, I, J and K are zero on reliable transports: they exist to absorb
        retransmissions, and a reliable transport has none (§17.1.1.2, §17.1.2.2,
        §17.2.1, §17.2.2).
        """
        getter = _GETTERS.get(timer)
        if getter is None:
            raise ValueError(f"{timer!r} is not a timeout timer (one of {''.join(sorted(TIMEOUT_TIMERS))})")
        if reliable and timer in _ZERO_WHEN_RELIABLE:
            return 0.0
        value: float = getter(self)
        return value


#: timer name -> the property getter of its value (every started timeout asks)
_GETTERS: Final[dict[str, Callable[[TimerConfig], float]]] = {
    name: getattr(TimerConfig, f"timer_{name.lower()}").fget for name in TIMEOUT_TIMERS
}
_ZERO_WHEN_RELIABLE: Final = frozenset("DIJK")
