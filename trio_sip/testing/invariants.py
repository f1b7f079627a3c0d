"""Invariants of a server under test: nothing left behind, no route code after its
transaction, live objects that return to zero.

Use them at the end of any virtual-time test (the chaos runner checks them after every
scenario)::

    with Watch() as watch:                    # before the server starts
        ... run the test ...
        await trio.sleep(64 * 0.5 + 5)        # past wt and the ended-transaction records
        problems = leftovers(server) + watch.problems()
        assert not problems, problems

* :func:`leftovers`: no server or client transaction in the transaction layer, no task in
  its nursery (every transaction, branch and route continuation ended; long-lived
  service tasks such as the rtpengine client are named in ``SERVICE_TASKS`` and
  skipped), no suspended Lua coroutine in any engine generation, no ended-transaction
  record kept past its time (the tables stay bounded), no transaction error, no handler
  error on a transport.
* :class:`Watch`: records, for as long as it is active (process-wide; tests are
  single-threaded), every Lua coroutine resumed after its transaction's task ended (a
  route running on a transaction that is gone), every async operation a route waited
  for and whether it finished or was cancelled (none may still run), and keeps weak references to every
  :class:`~trio_sip.runtime.transactions.ServerTx` and
  :class:`~trio_sip.runtime.branch.Branch` made (and every final each transaction sent
  upstream: :meth:`Watch.final_problems`, :meth:`Watch.unanswered`):
  :meth:`Watch.alive` counts those still
  in memory (after a garbage collection), which must return to zero once the server is
  stopped and dropped. While it is active, log records of the ``trio_sip`` loggers are
  formatted when made (message and traceback as text, no arguments, no exc_info):
  handlers that keep records, such as pytest's log capture, would otherwise keep the
  objects in their arguments and tracebacks alive. While it is active, what existed
  before is frozen (``gc.freeze``), so ``alive()`` only scans newer objects (cheap with
  pytest's big heap); a long run should ``gc.collect()`` between watches now and then.

What is not checked here: what the peers saw on the wire (a final lost on the way, a
caller getting two decisions through retransmissions): tests/chaos/test_chaos.py does
that from the network's trace.
"""

from __future__ import annotations

import gc
import logging
import weakref
from types import TracebackType
from typing import Any

import trio

from ..runtime.branch import Branch
from ..runtime.core import ProxyCore
from ..runtime.transactions import ServerTx
from ..script.context import MsgContext
from ..script.engine import ScriptEngine, Step

__all__ = ["SERVICE_TASKS", "Watch", "leftovers"]

#: tasks of the transaction layer's nursery that live as long as the server
SERVICE_TASKS = ("_run_client", "rtpengine-client", "serve_mi", "_run_service")


def _task_is_service(task: trio.lowlevel.Task) -> bool:
    return any(name in task.name for name in SERVICE_TASKS)


def _all_engines(engine: ScriptEngine) -> list[ScriptEngine]:
    older = getattr(engine, "older", None)
    return [*(older if isinstance(older, list) else []), engine]


def leftovers(server: Any) -> list[str]:
    """What ``server`` (a running or stopped :class:`~trio_sip.runtime.server.Server`)
    still holds that it should not once every transaction is over: an empty list when
    nothing. Call it after the last timer (wt, and 64*T1 for the ended records)."""
    out: list[str] = []
    tm = server.core.tm
    now = trio.current_time()
    if tm.servers:
        out.append(f"server transactions left: "
                   f"{sorted(f'{t.method}#{t.index}' for t in tm.servers.values())}")
    if tm.clients:
        out.append(f"client transactions left: {len(tm.clients)}")
    if tm.by_index:
        out.append(f"transactions left in the $T(id_index) table: {len(tm.by_index)}")
    if sum(tm.in_progress.values()):
        out.append(f"request routes still marked in progress: {sum(tm.in_progress.values())}")
    if tm.nursery is not None:
        tasks = [t.name for t in tm.nursery.child_tasks if not _task_is_service(t)]
        if tasks:
            out.append(f"tasks left in the transaction layer: {sorted(tasks)}")
    pending = server.core.engine.pending_coroutines
    if pending:
        out.append(f"suspended Lua coroutines: {pending}")
    # the records of ended transactions and branches are kept for 64*T1, then pruned
    for table, prune in (("_ended", "_prune_ended"), ("_server_ended", "_prune_server_ended")):
        records = getattr(tm, table, None)
        if records is None:
            continue
        fn = getattr(tm, prune, None)
        if fn is not None:
            fn(now)
        stale = [r for r in records.values() if getattr(r, "until", now + 1) <= now]
        if stale:
            out.append(f"{len(stale)} record(s) in tm.{table} kept past their time")
    stats = tm.statistics()
    if stats.get("tx_errors", 0):
        out.append(f"transaction errors: {stats['tx_errors']}")
    for t in server.transports:
        if t.statistics().handler_errors:
            out.append(f"handler errors on {t.proto} {t.local}: "
                       f"{t.statistics().handler_errors}")
    return out


class Watch:
    """See the module doc. A context manager; not reentrant (one at a time)."""

    _active: Watch | None = None

    def __init__(self) -> None:
        self.resumes = 0
        #: (coroutine id, transaction index, virtual time) of every late resume
        self.late_resumes: list[tuple[int, int, float]] = []
        self._tx: weakref.WeakSet[ServerTx] = weakref.WeakSet()
        self._branches: weakref.WeakSet[Branch] = weakref.WeakSet()
        self._cores: weakref.WeakSet[ProxyCore] = weakref.WeakSet()
        self.made = {"transactions": 0, "branches": 0}
        #: the async operations routes waited for (KSR.async.*, rtpengine, http...):
        #: started, and how each ended
        self.ops = {"started": 0, "finished": 0, "cancelled": 0}
        #: every server transaction made: index -> (method, Call-ID, its finished event),
        #: and the finals it sent upstream, in order (the machine's retransmissions not
        #: included)
        self.transactions: dict[int, tuple[str, str, trio.Event]] = {}
        self.finals: dict[int, list[int]] = {}
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> Watch:
        if Watch._active is not None:
            raise RuntimeError("a Watch is already active")
        Watch._active = self
        watch = self
        resume = ScriptEngine.resume
        tx_init = ServerTx.__init__
        branch_init = Branch.__init__

        def watched_resume(engine: ScriptEngine, co_id: int, ctx: MsgContext,
                           value: Any = None) -> Step:
            watch.resumes += 1
            tx = ctx.transaction
            finished = getattr(tx, "finished", None)
            if isinstance(finished, trio.Event) and finished.is_set():
                watch.late_resumes.append((co_id, getattr(tx, "index", 0),
                                           trio.current_time()))
            return resume(engine, co_id, ctx, value)

        def watched_tx_init(tx: ServerTx, *args: Any, **kwargs: Any) -> None:
            tx_init(tx, *args, **kwargs)
            watch._tx.add(tx)
            watch.made["transactions"] += 1
            watch.transactions[tx.index] = (tx.method, tx.request.call_id, tx.finished)

        send_upstream = ServerTx._send_upstream

        def watched_send_upstream(tx: ServerTx, data: bytes, code: int) -> bool:
            sent = send_upstream(tx, data, code)
            if sent and code >= 200:
                watch.finals.setdefault(tx.index, []).append(code)
            return sent

        def watched_branch_init(b: Branch, *args: Any, **kwargs: Any) -> None:
            branch_init(b, *args, **kwargs)
            watch._branches.add(b)
            watch.made["branches"] += 1

        make_record = logging.getLogRecordFactory()

        def text_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            if record.name.startswith("trio_sip"):
                if record.args:
                    record.msg, record.args = record.getMessage(), ()
                if record.exc_info:
                    record.exc_text = logging.Formatter().formatException(record.exc_info)
                    record.exc_info = None
            return record

        logging.setLogRecordFactory(text_record)
        self._factory = make_record
        # what exists now is not the test's: keep it out of alive()'s collections, which
        # then only scan what was made while watching (fast with pytest's big heap)
        gc.freeze()
        run_op = ProxyCore._run_op
        core_init = ProxyCore.__init__

        def watched_core_init(core: ProxyCore, *args: Any, **kwargs: Any) -> None:
            core_init(core, *args, **kwargs)
            watch._cores.add(core)

        async def watched_run_op(core: ProxyCore, ctx: MsgContext, op: Any) -> Any:
            watch.ops["started"] += 1
            try:
                result = await run_op(core, ctx, op)
            except trio.Cancelled:
                watch.ops["cancelled"] += 1
                raise
            watch.ops["finished"] += 1
            return result

        for cls, name, fn in ((ScriptEngine, "resume", watched_resume),
                              (ProxyCore, "_run_op", watched_run_op),
                              (ProxyCore, "__init__", watched_core_init),
                              (ServerTx, "__init__", watched_tx_init),
                              (ServerTx, "_send_upstream", watched_send_upstream),
                              (Branch, "__init__", watched_branch_init)):
            self._saved.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, fn)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for cls, name, fn in reversed(self._saved):
            setattr(cls, name, fn)
        self._saved.clear()
        logging.setLogRecordFactory(self._factory)
        gc.unfreeze()
        Watch._active = None

    def alive(self) -> dict[str, int]:
        """Transactions and branches made while watching that are still in memory
        (after a garbage collection of what was made while watching: what existed before
        is frozen, ``gc.freeze``, until the watch ends)."""
        gc.collect()
        return {"transactions": len(self._tx), "branches": len(self._branches)}

    def servers_alive(self) -> int:
        """Servers (their ProxyCore) made while watching and still in memory, after a
        garbage collection: 0 once every one is stopped and dropped."""
        gc.collect()
        return len(self._cores)

    def unanswered(self) -> list[str]:
        """The server transactions that ended without sending a final upstream (a route
        that dropped it, a server shut down), as ``METHOD#index``."""
        return [f"{method}#{i}" for i, (method, _, finished) in self.transactions.items()
                if finished.is_set() and not self.finals.get(i)]

    def finals_for(self, call_id: str, method: str = "INVITE") -> list[int]:
        """Every final the server transactions of this call (and method) sent upstream."""
        return [c for i, (m, cid, _) in self.transactions.items()
                if m == method and cid == call_id for c in self.finals.get(i, [])]

    def final_problems(self) -> list[str]:
        """Server transactions that sent more than one final decision upstream: a second
        non-2xx, a non-2xx after a 2xx, two finals to a non-INVITE. (Several 2xx to an
        INVITE are forks, §16.7 step 5; a 2xx after our non-2xx is the CANCEL/timeout
        race §16.7 step 10 still forwards, counted in :meth:`late_2xx`.)"""
        out = []
        for i, codes in self.finals.items():
            method = self.transactions[i][0] if i in self.transactions else "?"
            non2xx = [c for c in codes if c >= 300]
            first_2xx = next((n for n, c in enumerate(codes) if c < 300), None)
            if method != "INVITE" and len(codes) > 1:
                out.append(f"{method}#{i}: several finals upstream {codes}")
            elif len(non2xx) > 1:
                out.append(f"{method}#{i}: several non-2xx finals upstream {codes}")
            elif non2xx and first_2xx is not None and codes.index(non2xx[0]) > first_2xx:
                out.append(f"{method}#{i}: a non-2xx after a 2xx upstream {codes}")
        return out

    def late_2xx(self) -> int:
        """INVITE transactions that forwarded a 2xx after their own non-2xx final."""
        return sum(1 for codes in self.finals.values()
                   if codes and codes[0] >= 300 and any(c < 300 for c in codes))

    def problems(self) -> list[str]:
        """The late resumes, the async operations still running (neither finished nor
        cancelled) and the :meth:`final_problems`, as sentences (empty: none)."""
        out = [f"Lua coroutine {co} resumed at {at:.6f} after its transaction "
               f"#{tx} ended" for co, tx, at in self.late_resumes]
        out += self.final_problems()
        running = self.ops["started"] - self.ops["finished"] - self.ops["cancelled"]
        if running:
            out.append(f"{running} async operation(s) neither finished nor cancelled "
                       f"({self.ops})")
        return out
