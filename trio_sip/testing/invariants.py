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
  stopped and dropped; :meth:`Watch.leaks` says which ones they are and what holds each
  (a chain of references from a module global, a running coroutine's local or a frame:
  ``module tests.x: ['KEPT'] -> list [0] -> ServerTx INVITE#1 (Call-ID c1)``). Local UAC
  transactions (:class:`~trio_sip.runtime.uac.LocalUac`, Kamailio ``t_uac``) and servers
  (their ``ProxyCore``) are watched the same way. While it is active, log records of the ``trio_sip`` loggers are
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
import inspect
import logging
import sys
import weakref
from types import CoroutineType, FrameType, GeneratorType, TracebackType
from typing import Any

import trio

from ..runtime.branch import Branch
from ..runtime.core import ProxyCore
from ..runtime.transactions import ServerTx
from ..runtime.uac import LocalUac
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


#: how far up :meth:`Watch.leaks` looks for what holds a leaked object
_MAX_DEPTH = 8


def _describe(obj: object) -> str:
    if isinstance(obj, ServerTx):
        return f"ServerTx {obj.method}#{obj.index} (Call-ID {obj.request.call_id})"
    if isinstance(obj, Branch):
        return f"Branch {obj.method} #{obj.index} to {obj.uri}"
    if isinstance(obj, LocalUac):
        return f"LocalUac {obj.method} (Call-ID {obj.call_id}, CSeq {obj.cseq})"
    if isinstance(obj, ProxyCore):
        return "ProxyCore (a server)"
    if isinstance(obj, (CoroutineType, GeneratorType)):
        return f"{type(obj).__name__} {obj.__qualname__}()"
    if isinstance(obj, FrameType):
        return f"frame of {obj.f_code.co_name}() ({obj.f_code.co_filename}:{obj.f_lineno})"
    return type(obj).__name__


def _edge(holder: object, held: object) -> str:
    """How ``holder`` refers to ``held``: an index, a key, an attribute, a local."""
    if isinstance(holder, dict):
        for k, v in holder.items():
            if v is held:
                return f"[{k!r}]"
        return "(a key)"
    if isinstance(holder, (list, tuple)):
        for i, v in enumerate(holder):
            if v is held:
                return f"[{i}]"
    if isinstance(holder, (CoroutineType, GeneratorType, FrameType)):
        frame = holder if isinstance(holder, FrameType) else (
            holder.cr_frame if isinstance(holder, CoroutineType) else holder.gi_frame)
        if frame is not None and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            # f_locals of a function's frame is, up to Python 3.12, a snapshot dict the
            # frame caches: emptied after the look, or it would keep what the function
            # lets go of later (3.13's is a live proxy, with nothing to empty)
            snapshot = frame.f_locals
            try:
                for k, v in snapshot.items():
                    if v is held:
                        return f"local {k!r}"
            finally:
                if isinstance(snapshot, dict):
                    snapshot.clear()
    if getattr(holder, "__dict__", None) is held:
        return ".__dict__"
    if getattr(holder, "__closure__", None) is held:
        return ".__closure__"
    if type(held).__name__ == "cell":
        return ""
    for name in getattr(type(holder), "__slots__", ()):
        if getattr(holder, name, None) is held:
            return f".{name}"
    if type(holder).__name__ == "cell":
        return "(closure cell)"
    return ""


def _paths_to(objs: list[object]) -> dict[int, str]:
    """For each of ``objs`` (by id): the chain of references from a root to it, found
    breadth first (so the shortest; through the other objects too), one pass over the
    collector's objects per level for all of them."""
    modules = {id(m.__dict__): name for name, m in list(sys.modules.items())
               if getattr(m, "__dict__", None) is not None}
    # per leaked object (by id): node id -> (node, what it holds on the way there)
    seen: dict[int, dict[int, tuple[object, object | None]]] = {
        id(o): {id(o): (o, None)} for o in objs}
    # node id -> (node, the leaked objects whose search reached it last level)
    frontier: dict[int, tuple[object, list[int]]] = {}
    for o in objs:
        frontier.setdefault(id(o), (o, []))[1].append(id(o))
    found: dict[int, str] = {}
    mine = {id(seen), id(objs), id(found), *map(id, seen.values())}
    for _ in range(_MAX_DEPTH):
        if not frontier or len(found) == len(objs):
            break
        mine.add(id(frontier))
        heap = gc.get_objects()
        mine.add(id(heap))
        nxt: dict[int, tuple[object, list[int]]] = {}
        mine.add(id(nxt))
        for holder in heap:
            if id(holder) in mine:
                continue
            for ref in gc.get_referents(holder):
                entry = frontier.get(id(ref))
                if entry is None:
                    continue
                for origin in entry[1]:
                    if origin in found or id(holder) in seen[origin]:
                        continue
                    seen[origin][id(holder)] = (holder, ref)
                    root = modules.get(id(holder))
                    if root is not None:
                        root = f"module {root}"
                    elif isinstance(holder, (CoroutineType, GeneratorType, FrameType)):
                        root = _describe(holder)
                    if root is not None:
                        found[origin] = _chain(root, holder, seen[origin])
                    else:
                        item = nxt.setdefault(id(holder), (holder, []))
                        mine.add(id(item))
                        mine.add(id(item[1]))
                        item[1].append(origin)
        del heap
        frontier = nxt
    return found


def _chain(root: str, holder: object, seen: dict[int, tuple[object, object | None]]
           ) -> str:
    parts = []
    node: object = holder
    for _ in range(_MAX_DEPTH + 1):
        held = seen[id(node)][1]
        if held is None:
            break
        parts.append(f"{_edge(node, held)} -> {_describe(held)}")
        node = held
    return f"{root}: {' '.join(parts)}"


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
        self._uacs: weakref.WeakSet[LocalUac] = weakref.WeakSet()
        self.made = {"transactions": 0, "branches": 0, "local_uacs": 0}
        #: id() of every object the weak sets were given: :meth:`leaks` also finds those
        #: of them that a finalizer resurrected (the collector clears the weak
        #: references to garbage before it runs the finalizers)
        self._made_ids: set[int] = set()
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
            watch._made_ids.add(id(tx))
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
            watch._made_ids.add(id(b))
            watch.made["branches"] += 1

        uac_init = LocalUac.__init__

        def watched_uac_init(uac: LocalUac, *args: Any, **kwargs: Any) -> None:
            uac_init(uac, *args, **kwargs)
            watch._uacs.add(uac)
            watch._made_ids.add(id(uac))
            watch.made["local_uacs"] += 1

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
            watch._made_ids.add(id(core))

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
                              (Branch, "__init__", watched_branch_init),
                              (LocalUac, "__init__", watched_uac_init)):
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

    def leaks(self, show: int = 5) -> list[str]:
        """What was made while watching and is still in memory, after a garbage
        collection: one sentence per object (at most ``show``; then how many more), naming
        it and the chain of references that keeps it, from a root (a module global, a
        local of a running coroutine or generator, a frame) down to it; "no root found"
        when none is within ``_MAX_DEPTH`` references (something outside the objects the
        collector tracks holds it). Empty when nothing is left: call it once the servers
        are stopped and dropped. Finding the chains takes a few passes over the heap
        (only done when something is left) and ends the freeze of what existed before
        the watch (the later collections scan it all)."""
        gc.collect()
        kinds: list[tuple[str, type, list[object]]] = [
            ("servers", ProxyCore, list(self._cores)),
            ("transactions", ServerTx, list(self._tx)),
            ("branches", Branch, list(self._branches)),
            ("local UAC transactions", LocalUac, list(self._uacs))]
        # the resurrected ones: made while watching, out of the weak sets, still here
        # (what the collector tracks and is not frozen: what was made while watching)
        known = {id(o) for _, _, objs in kinds for o in objs}
        back = [o for o in gc.get_objects() if id(o) in self._made_ids and id(o) not in known]
        for _, cls, objs in kinds:
            objs += [o for o in back if isinstance(o, cls)]
        del back
        left: list[object] = [obj for _, _, objs in kinds for obj in objs]
        if not left:
            return []
        # what holds them may be older than the watch: thaw it for the search, and leave
        # it thawed (freezing again would freeze the leaked objects too, and a collection
        # could no longer free them once released: the rest of the watch is slower)
        gc.unfreeze()
        paths = _paths_to(left[:show])
        counts = ", ".join(f"{kind}: {len(objs)}" for kind, _, objs in kinds if objs)
        out = [f"still in memory: {counts}"]
        out += [f"{_describe(obj)} held by {paths.get(id(obj), 'no root found')}"
                for obj in left[:show]]
        if len(left) > show:
            out.append(f"... and {len(left) - show} more")
        return out

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
