"""Operations that a route waits for: the yield protocol of the async bridge.

An export declared ``is_async`` returns an :class:`AsyncOp` (or a negative
int when its arguments are already wrong). Its Lua wrapper yields the op out of
the route's coroutine; the runtime runs ``await op.run(ctx)`` as a task owned
by the transaction the route serves, under the op's timeout, and resumes the
coroutine with the result. The route continues at the next line with every
local variable intact.

::

    Lua route                     runtime (transaction task)
    ─────────                     ──────────────────────────
    local r = KSR.async.sleep(2)
      └ yield SleepOp(2) ───────▶ with move_on_after(op.timeout):
                                      result = await op.run(ctx)
      ◀─ resume(result) ──────── (a timeout gives op.timeout_result, -2 by default;
    KSR.info("slept " .. r)        an exception gives -1 and is logged)

If the transaction ends first (CANCEL, fr timeout, shutdown), the op is
cancelled with its nursery and the coroutine is abandoned: no line of the
route runs after its transaction ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import trio

from .context import MsgContext


class AsyncOp:
    """Base class of what async exports return. Subclasses implement :meth:`run`."""

    #: shown in logs and statistics
    name: str = "op"
    #: seconds; None: no timeout beyond the transaction's own lifetime
    timeout: float | None = None
    #: what the route gets when the timeout expires (Kamailio style: negative)
    timeout_result: Any = -2

    async def run(self, ctx: MsgContext) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} timeout={self.timeout}>"


@dataclass(repr=False)
class SleepOp(AsyncOp):
    """Wait ``seconds`` (virtual time under MockClock), then resume with 1."""

    seconds: float
    name: str = "sleep"

    async def run(self, ctx: MsgContext) -> Any:
        await trio.sleep(max(0.0, self.seconds))
        return 1


def deadline_after(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout
