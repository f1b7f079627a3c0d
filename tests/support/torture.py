"""Send the RFC 4475 / RFC 5118 torture corpus to a SIP server on loopback and judge replies.

Theory of operation
-------------------
The corpus (``manifest.json`` + exact wire bytes, see its README) is found through
$TRIO_SIP_TORTURE_DIR, else ``<repo>/../shared/conformance/sip-torture`` (where CI puts a
copy of shared/ beside the clone). Each message is sent to the server under test on
127.0.0.1 over its manifest ``transport`` (UDP, or a fresh TCP connection per message).

Replies are collected for ``window`` seconds after each round of sends:

* on our UDP source socket (replies to a Via with ``rport``),
* on 127.0.0.1 at the Via sent-by ports the corpus names, 5060, 5050, 6050, 19823, and 5080
  (mpart01's Route), UDP and TCP: RFC 3261 §18.2.2 sends a UDP response to ``received``
  (127.0.0.1, the packet's source) at the sent-by port. A port already taken (say the server
  itself runs on 5060) is skipped with a warning: replies sent there are lost;
* on the TCP connection a TCP message was sent on.

A received *response* is a reply; a received *request* is the message forwarded ("fwd") to a
loopback listener. Both are matched to the sent message by Call-ID (TCP replies by their
connection). Messages sharing a Call-ID or a transaction key (top Via branch + sent-by +
method) never share a round: a later round may start ``txn_wait`` seconds after its twins
were sent, since a stateful server rightly takes the second as a retransmission and answers
from its transaction (the README suggests 33 s, Timer J/H). trio-sip's own tests run the
stateless core, so the default is 0. The one message without a Call-ID (insuf) gets every
unmatched reply of its round.

Judging (:func:`judge`) compares what came back with the manifest's ``accept`` list
(``accept_strict`` instead with ``strict``, plus ``accept_lenient`` with ``lenient``):
``none`` no reply and no forward; ``any`` any response; ``non400`` at least one response and
no 400; ``fwd`` forwarded to a listener; ``4xx``/``5xx`` class of the final status; ``NNN``
exact final status. A reply carrying one of ``forbid_callids`` always fails.

Safety: the messages name hosts such as 192.0.2.x and example.com. This checker only binds
and sends to 127.0.0.1; a server that would forward to those hosts must run with its
loopback-only guard, so such forwards are refused by the server and only replies are seen.

By hand: ``python -m tests.support.torture --port 5070`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

__all__ = [
    "REPLY_PORTS",
    "Reply",
    "TortureMessage",
    "Verdict",
    "find_torture_dir",
    "judge",
    "load_corpus",
    "main",
    "parse_sip",
    "plan_rounds",
    "run_torture",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ENV_DIR = "TRIO_SIP_TORTURE_DIR"
REPLY_PORTS: tuple[int, ...] = (5060, 5050, 6050, 19823, 5080)
_MAX_DATAGRAM = 65535
_MAX_TCP_BUFFER = 1 << 20  # per connection; a reply larger than this is truncated
_MAX_TCP_CONNECTIONS = 64  # inbound, per listener
_TCP_CONNECT_TIMEOUT = 2.0

Address = int | tuple[str, int]


# --- locating and loading the corpus ---------------------------------------------------


def find_torture_dir() -> Path | None:
    """$TRIO_SIP_TORTURE_DIR, else ``<repo>/../shared/conformance/sip-torture``, else the
    same below ``<repo>/shared``; None if no manifest.json is found."""
    candidates: list[Path] = []
    env = os.environ.get(ENV_DIR)
    if env:
        candidates.append(Path(env))
    repo = Path(__file__).resolve().parents[2]
    candidates.append(repo.parent / "shared" / "conformance" / "sip-torture")
    candidates.append(repo / "shared" / "conformance" / "sip-torture")
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    return None


@dataclass(frozen=True)
class TortureMessage:
    id: str
    data: bytes
    kind: str  # request | response
    method: str | None
    transport: str  # udp | tcp
    verdict: str  # valid | invalid | unreferenced
    accept: tuple[str, ...]
    accept_lenient: tuple[str, ...] = ()
    accept_strict: tuple[str, ...] | None = None
    forbid_callids: tuple[str, ...] = ()
    expected: str = ""

    @property
    def call_ids(self) -> tuple[str, ...]:
        return parse_sip(self.data).call_ids

    @property
    def txn_key(self) -> tuple[str, str, str] | None:
        return parse_sip(self.data).txn_key


def load_corpus(directory: Path | None = None) -> list[TortureMessage]:
    """Every manifest entry with its bytes (checked against the manifest's size)."""
    d = directory or find_torture_dir()
    if d is None:
        raise FileNotFoundError(
            f"torture corpus not found: set ${ENV_DIR} or put shared/ beside the repository"
        )
    manifest = json.loads((d / "manifest.json").read_text())
    out: list[TortureMessage] = []
    for e in manifest["messages"]:
        data = (d / e["file"]).read_bytes()
        if "bytes" in e and len(data) != e["bytes"]:
            raise ValueError(f"{e['id']}: {len(data)} bytes on disk, manifest says {e['bytes']}")
        strict = e.get("accept_strict")
        out.append(
            TortureMessage(
                id=e["id"],
                data=data,
                kind=e.get("kind", "request"),
                method=e.get("method"),
                transport=e.get("transport") or "udp",
                verdict=e.get("verdict", "valid"),
                accept=tuple(e.get("accept", ())),
                accept_lenient=tuple(e.get("accept_lenient") or ()),
                accept_strict=tuple(strict) if strict is not None else None,
                forbid_callids=tuple(e.get("forbid_callids") or ()),
                expected=e.get("expected", ""),
            )
        )
    return out


# --- a tolerant look at SIP bytes ---------------------------------------------------------

_COMPACT = {"i": "call-id", "v": "via", "l": "content-length", "f": "from", "t": "to"}
_STATUS_RE = re.compile(r"^SIP\s*/[^ ]*\s+(\d*)", re.I)
_BRANCH_RE = re.compile(r"branch\s*=\s*([^;,\s]+)", re.I)
_SENTBY_RE = re.compile(r"^SIP\s*/\s*[\d.]+\s*/\s*\S+\s+([^;,]+)", re.I)


@dataclass(frozen=True)
class Parsed:
    start_line: str
    status: int | None  # responses (0 if the code is not a number)
    method: str | None  # requests
    headers: tuple[tuple[str, str], ...]  # (lower-case full name, unfolded value)

    @property
    def is_response(self) -> bool:
        return self.status is not None

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    @property
    def call_ids(self) -> tuple[str, ...]:
        return tuple(_norm(v) for v in self.values("call-id"))

    @property
    def txn_key(self) -> tuple[str, str, str] | None:
        """RFC 3261 §17.2.3 key: (top Via branch, sent-by with default port, CSeq method,
        ACK counted as INVITE). None without a Via."""
        vias = self.values("via")
        if not vias:
            return None
        top = vias[0].split(",")[0]
        branch = _BRANCH_RE.search(top)
        sent_by = _SENTBY_RE.match(top.strip())
        host = re.sub(r"\s+", "", sent_by.group(1)) if sent_by else ""
        if host and not re.search(r"(\]|^[^:\[]+):\d+$", host):
            host += ":5060"
        cseq = self.values("cseq")
        method = cseq[0].split()[-1].upper() if cseq and cseq[0].split() else ""
        if method == "ACK":
            method = "INVITE"
        return (branch.group(1) if branch else "", host.lower(), method)


def _norm(v: str) -> str:
    return " ".join(v.split())


def parse_sip(data: bytes) -> Parsed:
    """Start line and headers of the first message in ``data``; never raises.

    Only the header section up to the first empty line is read (so dblreq's trailing INVITE
    is not), folded lines are unfolded and compact names expanded."""
    head = data
    for blank in (b"\r\n\r\n", b"\n\n"):
        i = data.find(blank)
        if i >= 0:
            head = data[:i]
            break
    text = head.decode("utf-8", "replace")
    lines = re.split(r"\r?\n", text)
    start = lines[0].strip() if lines else ""
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        else:
            unfolded.append(line)
    headers: list[tuple[str, str]] = []
    for line in unfolded:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        headers.append((_COMPACT.get(key, key), value.strip()))
    # Anything starting "SIP/" is a response, whatever its status code (bigcode's
    # 4294967301 included); a status that is not a number reads as 0.
    m = _STATUS_RE.match(start)
    status = (int(m.group(1)) if m.group(1) else 0) if m else None
    method = None if status is not None else (start.split(" ", 1)[0] or None)
    return Parsed(start, status, method, tuple(headers))


# --- verdicts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One message received while a torture message was outstanding."""

    data: bytes
    via: str  # where it arrived: "udp:5060", "tcp-conn", "udp:src" ...

    @property
    def parsed(self) -> Parsed:
        return parse_sip(self.data)

    @property
    def summary(self) -> str:
        return f"{self.parsed.start_line[:60]} [{self.via}]"


@dataclass(frozen=True)
class Verdict:
    id: str
    outcome: str  # none | fwd | NNN (final status, else highest provisional) | forbidden
    passed: bool
    detail: str
    transport: str = ""
    replies: tuple[str, ...] = ()


def _accepted(msg: TortureMessage, *, lenient: bool, strict: bool) -> tuple[str, ...]:
    if lenient and strict:
        raise ValueError("lenient and strict are exclusive")
    if strict and msg.accept_strict is not None:
        return msg.accept_strict
    if lenient:
        return msg.accept + msg.accept_lenient
    return msg.accept


def _token_ok(token: str, *, statuses: list[int], final: int | None, fwd: bool) -> bool:
    if token == "none":
        return not statuses and not fwd
    if token == "any":
        return bool(statuses)
    if token == "fwd":
        return fwd
    if token == "non400":
        return bool(statuses) and 400 not in statuses
    if re.fullmatch(r"[1-6]xx", token):
        return final is not None and final // 100 == int(token[0])
    if re.fullmatch(r"\d{3}", token):
        return final == int(token)
    raise ValueError(f"unknown outcome token {token!r} in the manifest")


def judge(
    msg: TortureMessage,
    replies: Sequence[Reply],
    *,
    lenient: bool = False,
    strict: bool = False,
    transport: str = "",
) -> Verdict:
    """The verdict for ``msg`` given everything attributed to it. Pure: no I/O."""
    accepted = _accepted(msg, lenient=lenient, strict=strict)
    parsed = [r.parsed for r in replies]
    summaries = tuple(r.summary for r in replies)
    forbidden = sorted({c for p in parsed for c in p.call_ids} & set(msg.forbid_callids))
    if forbidden:
        return Verdict(
            msg.id,
            "forbidden",
            False,
            f"a reply carries Call-ID {forbidden[0]}: trailing octets were parsed as a request",
            transport,
            summaries,
        )
    statuses = [p.status for p in parsed if p.status is not None]
    fwd = any(not p.is_response for p in parsed)
    if msg.kind == "response":
        # A response is never answered; one that comes back was relayed ("fwd").
        fwd = fwd or bool(statuses)
        statuses = []
    finals = [s for s in statuses if s >= 200]
    final = finals[0] if finals else None
    if final is not None:
        outcome = str(final)
    elif statuses:
        outcome = str(max(statuses))
    elif fwd:
        outcome = "fwd"
    else:
        outcome = "none"
    if msg.verdict == "unreferenced":
        return Verdict(msg.id, outcome, True, "unreferenced: not judged", transport, summaries)
    passed = any(_token_ok(t, statuses=statuses, final=final, fwd=fwd) for t in accepted)
    mode = "strict" if strict else "lenient" if lenient else "default"
    detail = f"{outcome}; accepts {'/'.join(accepted) or '-'} ({mode}); {msg.verdict}"
    if len(statuses) > 1:
        detail += f"; statuses {statuses}"
    return Verdict(msg.id, outcome, passed, detail, transport, summaries)


# --- rounds ----------------------------------------------------------------------------------


def plan_rounds(messages: Sequence[TortureMessage]) -> list[list[TortureMessage]]:
    """Greedy rounds: no two messages of a round share a Call-ID (forbidden ones included) or
    a transaction key, and at most one message without a Call-ID per round."""
    rounds: list[list[TortureMessage]] = []
    claims: list[tuple[set[str], set[tuple[str, str, str]], bool]] = []
    for msg in messages:
        ids = set(msg.call_ids) | set(msg.forbid_callids)
        key = msg.txn_key
        keys = {key} if key is not None else set()
        anonymous = not msg.call_ids
        for i, (r_ids, r_keys, r_anon) in enumerate(claims):
            if ids & r_ids or keys & r_keys or (anonymous and r_anon):
                continue
            rounds[i].append(msg)
            r_ids |= ids
            r_keys |= keys
            claims[i] = (r_ids, r_keys, r_anon or anonymous)
            break
        else:
            rounds.append([msg])
            claims.append((ids, keys, anonymous))
    return rounds


# --- the network side ---------------------------------------------------------------------


def _check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the torture checker only targets loopback, not {host!r}")
    return host


def _frames(buf: bytearray) -> Iterable[bytes]:
    """Pop complete SIP messages (header + Content-Length body) off a TCP stream buffer."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        # Keep-alive CRLFs between messages (RFC 5626) are skipped.
        if end == 0 or not buf[:end].strip():
            del buf[: end + 4]
            continue
        length = 0
        for _k, v in (
            h for h in parse_sip(bytes(buf[: end + 4])).headers if h[0] == "content-length"
        ):
            try:
                length = int(v.split()[0])
            except (ValueError, IndexError):
                length = 0
        total = end + 4 + max(0, length)
        if len(buf) < total:
            return
        msg = bytes(buf[:total])
        del buf[:total]
        yield msg


class _Collector:
    """Routes every received message to the torture message it belongs to."""

    def __init__(self, notes: Callable[[str], None]) -> None:
        self.notes = notes
        self.by_callid: dict[str, str] = {}
        self.anonymous: str | None = None
        self.replies: dict[str, list[Reply]] = {}
        self.strays: list[Reply] = []

    def open_round(self, msgs: Sequence[TortureMessage]) -> None:
        # Call-IDs stay mapped across rounds (a late reply still belongs to its message);
        # a Call-ID reused by a later round now means the later message.
        self.anonymous = None
        for m in msgs:
            self.replies.setdefault(m.id, [])
            for c in (*m.call_ids, *m.forbid_callids):
                self.by_callid[c] = m.id
            if not m.call_ids:
                self.anonymous = m.id

    def add(self, data: bytes, via: str, owner: str | None = None) -> None:
        reply = Reply(data, via)
        if owner is None:
            for c in reply.parsed.call_ids:
                owner = self.by_callid.get(c)
                if owner is not None:
                    break
            else:
                owner = self.anonymous
        if owner is None:
            self.strays.append(reply)
            self.notes(f"unmatched message: {reply.summary}")
        else:
            self.replies.setdefault(owner, []).append(reply)


async def _udp_listener(sock: trio.socket.SocketType, label: str, collector: _Collector) -> None:
    while True:
        data, _addr = await sock.recvfrom(_MAX_DATAGRAM)
        collector.add(data, label)


async def _tcp_reader(
    stream: trio.SocketStream, label: str, collector: _Collector, owner: str | None
) -> None:
    buf = bytearray()
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not chunk:
                return
            buf += chunk
            if len(buf) > _MAX_TCP_BUFFER:
                collector.add(bytes(buf), label, owner)
                return
            for frame in _frames(buf):
                collector.add(frame, label, owner)


async def _tcp_listener(listener: trio.SocketListener, label: str, collector: _Collector) -> None:
    async with trio.open_nursery() as nursery:
        accepted = 0
        while accepted < _MAX_TCP_CONNECTIONS:
            stream = await listener.accept()
            accepted += 1
            nursery.start_soon(_tcp_reader, stream, label, collector, None)


async def _bind_listeners(
    ports: Iterable[int], notes: Callable[[str], None]
) -> tuple[list[tuple[trio.socket.SocketType, str]], list[tuple[trio.SocketListener, str]]]:
    udp: list[tuple[trio.socket.SocketType, str]] = []
    tcp: list[tuple[trio.SocketListener, str]] = []
    for port in ports:
        s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        try:
            await s.bind((LOOPBACK, port))
            udp.append((s, f"udp:{port}"))
        except OSError as exc:
            s.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            notes(f"UDP {LOOPBACK}:{port} is taken: replies sent there are lost")
        try:
            listeners = await trio.open_tcp_listeners(port, host=LOOPBACK)
            tcp.extend((lst, f"tcp:{port}") for lst in listeners)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            notes(f"TCP {LOOPBACK}:{port} is taken: connections to it are lost")
    return udp, tcp


async def run_torture(
    server_addr: Address,
    *,
    transport_ok: Collection[str] = frozenset({"udp", "tcp"}),
    window: float = 1.0,
    lenient: bool = False,
    strict: bool = False,
    txn_wait: float = 0.0,
    ids: Collection[str] | None = None,
    include_unreferenced: bool = False,
    reply_ports: Iterable[int] = REPLY_PORTS,
    torture_dir: Path | None = None,
    messages: Sequence[TortureMessage] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[Verdict]:
    """Send the corpus to ``server_addr`` (a port, or (host, port) on loopback) and judge it.

    ``transport_ok``: transports the server listens on; a TCP message goes over UDP when
    "tcp" is missing or the connection is refused (noted). ``window``: seconds to collect
    after each round. ``txn_wait``: minimum seconds between a message and a later one with
    the same transaction key or Call-ID (0 for a stateless server, 33 for a stateful one).
    ``ids`` restricts the run; ``messages`` replaces the corpus (tests). Notes (ports taken,
    fallbacks, unmatched replies) go to ``on_note`` and the module logger.
    """
    if lenient and strict:
        raise ValueError("lenient and strict are exclusive")
    host, port = (LOOPBACK, server_addr) if isinstance(server_addr, int) else server_addr
    server = (_check_loopback(host), int(port))

    def note(text: str) -> None:
        log.warning("%s", text)
        if on_note is not None:
            on_note(text)

    corpus = list(messages) if messages is not None else load_corpus(torture_dir)
    selected = [
        m
        for m in corpus
        if (ids is None or m.id in ids)
        and (include_unreferenced or m.verdict != "unreferenced" or (ids and m.id in ids))
    ]
    if ids is not None:
        unknown = set(ids) - {m.id for m in corpus}
        if unknown:
            raise KeyError(f"unknown torture ids: {sorted(unknown)}")
    rounds = plan_rounds(selected)
    collector = _Collector(note)
    transports: dict[str, str] = {}
    sent_at: dict[object, float] = {}  # Call-ID or txn key -> last send time

    udp, tcp = await _bind_listeners(sorted(set(reply_ports) - {server[1]}), note)
    if server[1] in set(reply_ports):
        note(f"the server itself is on reply port {server[1]}: replies sent there are lost")
    src = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    try:
        await src.bind((LOOPBACK, 0))
        async with trio.open_nursery() as listeners:
            for sock, label in udp:
                listeners.start_soon(_udp_listener, sock, label, collector)
            listeners.start_soon(_udp_listener, src, "udp:src", collector)
            for lst, label in tcp:
                listeners.start_soon(_tcp_listener, lst, label, collector)

            for batch in rounds:
                twins = [k for m in batch for k in (*m.call_ids, m.txn_key) if k in sent_at]
                if twins and txn_wait > 0:
                    await trio.sleep_until(max(sent_at[k] for k in twins) + txn_wait)
                collector.open_round(batch)
                async with trio.open_nursery() as conns:
                    for m in batch:
                        use_tcp = m.transport == "tcp" and "tcp" in transport_ok
                        if m.transport == "tcp" and not use_tcp:
                            note(f"{m.id}: TCP not offered by the server; sent over UDP")
                        sent = False
                        if use_tcp:
                            sent = await conns.start(_start_tcp, server, m, collector)
                            if not sent:
                                note(f"{m.id}: TCP connection refused; sent over UDP")
                        if not sent:
                            await src.sendto(m.data, server)
                        transports[m.id] = "tcp" if sent else "udp"
                        now = trio.current_time()
                        for k in (*m.call_ids, m.txn_key):
                            if k is not None:
                                sent_at[k] = now
                    await trio.sleep(window)
                    conns.cancel_scope.cancel()
            listeners.cancel_scope.cancel()
    finally:
        src.close()
        for sock, _ in udp:
            sock.close()
        for lst, _ in tcp:
            await lst.aclose()

    return [
        judge(
            m,
            collector.replies.get(m.id, []),
            lenient=lenient,
            strict=strict,
            transport=transports.get(m.id, ""),
        )
        for m in selected
    ]


async def _start_tcp(
    server: tuple[str, int],
    msg: TortureMessage,
    collector: _Collector,
    *,
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect and send, report whether it worked, then keep reading replies."""
    try:
        with trio.fail_after(_TCP_CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(*server)
    except (OSError, trio.TooSlowError):
        task_status.started(False)
        return
    try:
        await stream.send_all(msg.data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        task_status.started(True)
        await stream.aclose()
        return
    task_status.started(True)
    await _tcp_reader(stream, "tcp-conn", collector, msg.id)


# --- by hand -----------------------------------------------------------------------------


def _report(verdicts: Sequence[Verdict], out: Callable[[str], None]) -> None:
    width = max((len(v.id) for v in verdicts), default=4)
    for v in verdicts:
        mark = "ok  " if v.passed else "FAIL"
        out(f"{mark} {v.id:<{width}} {v.transport:<3} {v.outcome:<9} {v.detail}")
        if not v.passed:
            for r in v.replies:
                out(f"       <- {r}")
    passed = sum(v.passed for v in verdicts)
    out(f"torture: {passed} passed, {len(verdicts) - passed} failed")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.torture",
        description="Send the RFC 4475/5118 torture corpus to a SIP server on 127.0.0.1 "
        "(run the server with its loopback-only guard on) and judge its replies.",
    )
    p.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    p.add_argument("--host", default=LOOPBACK, help="a loopback address (default 127.0.0.1)")
    p.add_argument("--window", type=float, default=1.0, help="seconds to collect per round")
    p.add_argument(
        "--txn-wait", type=float, default=0.0,
        help="seconds between transaction twins (33 for a stateful server; default 0)",
    )  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lenient", action="store_true", help="also accept accept_lenient")
    mode.add_argument("--strict", action="store_true", help="judge with accept_strict")
    p.add_argument("--udp-only", action="store_true", help="send TCP messages over UDP")
    p.add_argument("--only", default="", help="comma-separated ids to send")
    p.add_argument("--include-unreferenced", action="store_true", help="also send 'test'")
    p.add_argument("--dir", type=Path, default=None, help=f"corpus directory (or ${ENV_DIR})")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="note: %(message)s")
    started = time.monotonic()
    verdicts = trio.run(
        lambda: run_torture(
            (args.host, args.port),
            transport_ok={"udp"} if args.udp_only else {"udp", "tcp"},
            window=args.window,
            lenient=args.lenient,
            strict=args.strict,
            txn_wait=args.txn_wait,
            ids=[i for i in args.only.split(",") if i] or None,
            include_unreferenced=args.include_unreferenced,
            torture_dir=args.dir,
        )
    )
    _report(verdicts, print)
    print(f"({time.monotonic() - started:.1f} s)")
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
