"""The torture checker's parsing, round planning and judging, proven against tiny fake
responders on loopback (not against trio-sip): what the checker concludes must follow from
what the fake did."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import trio

from tests.support.ports import LOOPBACK, free_port, free_port_both
from tests.support.torture import (
    Reply,
    TortureMessage,
    find_torture_dir,
    judge,
    load_corpus,
    parse_sip,
    plan_rounds,
    run_torture,
)

CORPUS_DIR = find_torture_dir()
needs_corpus = pytest.mark.skipif(
    CORPUS_DIR is None,
    reason="torture corpus not found ($TRIO_SIP_TORTURE_DIR or ../shared/conformance/sip-torture)",
)
WINDOW = 0.25


def _msg(
    accept: tuple[str, ...],
    *,
    kind: str = "request",
    verdict: str = "valid",
    lenient: tuple[str, ...] = (),
    strict: tuple[str, ...] | None = None,
    forbid: tuple[str, ...] = (),
) -> TortureMessage:
    data = (
        b"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"Call-ID: c1@h\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    return TortureMessage(
        "t", data, kind, "OPTIONS", "udp", verdict, accept, lenient, strict, forbid
    )


def _resp(status: int, call_id: str = "c1@h") -> Reply:
    return Reply(
        f"SIP/2.0 {status} X\r\nCall-ID: {call_id}\r\nContent-Length: 0\r\n\r\n".encode(), "udp:src"
    )


FWD = Reply(b"OPTIONS sip:x@example.com SIP/2.0\r\nCall-ID: c1@h\r\n\r\n", "udp:5080")


# --- pure logic -------------------------------------------------------------------------------


def test_parse_sip_unfolds_and_expands_compact_names() -> None:
    p = parse_sip(
        b"INVITE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h.example.com:5070;branch=z9hG4bKx\r\n"
        b"i: abc\r\n  def\r\nCSeq: 7 ACK\r\nl: 3\r\n\r\nxyz\r\n\r\nINVITE junk SIP/2.0\r\n"
        b"Call-ID: trailing\r\n\r\n"
    )
    assert (p.method, p.status) == ("INVITE", None)
    assert p.call_ids == ("abc def",)  # folded, whitespace normalised; trailing part unread
    assert p.txn_key == ("z9hG4bKx", "h.example.com:5070", "INVITE")  # ACK counts as INVITE
    r = parse_sip(b"SIP/2.0 486 Busy\r\nCall-ID: x\r\n\r\n")
    assert (r.status, r.is_response) == (486, True)
    assert parse_sip(b"").start_line == "" and parse_sip(b"\xff\xfe").call_ids == ()
    assert parse_sip(b"OPTIONS x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n").txn_key == (
        "",
        "h:5060",
        "",
    )


@pytest.mark.parametrize(
    ("replies", "outcome", "passed"),
    [
        ([], "none", True),
        ([_resp(200)], "200", True),
        ([_resp(100)], "100", True),  # replied, no 400
        ([_resp(100), _resp(404)], "404", True),
        ([_resp(400)], "400", False),
        ([_resp(100), _resp(400)], "400", False),
        ([FWD], "fwd", True),
    ],
)
def test_judge_valid_request(replies: list[Reply], outcome: str, passed: bool) -> None:
    v = judge(_msg(("non400", "fwd", "none"), strict=("non400", "fwd")), replies)
    assert (v.outcome, v.passed) == (outcome, passed), v.detail
    assert len(v.replies) == len(replies)


def test_judge_strict_and_lenient() -> None:
    valid = _msg(("non400", "fwd", "none"), strict=("non400", "fwd"))
    assert not judge(valid, [], strict=True).passed  # must reply or forward
    assert judge(valid, [FWD], strict=True).passed

    invalid = _msg(("4xx", "none"), verdict="invalid", lenient=("any", "fwd"), strict=("400",))
    assert judge(invalid, [_resp(404)]).passed
    assert not judge(invalid, [_resp(404)], strict=True).passed
    assert judge(invalid, [_resp(400)], strict=True).passed
    assert not judge(invalid, [_resp(200)]).passed
    assert judge(invalid, [_resp(200)], lenient=True).passed
    assert judge(invalid, [FWD], lenient=True).passed
    assert not judge(invalid, [FWD]).passed
    with pytest.raises(ValueError, match="exclusive"):
        judge(invalid, [], lenient=True, strict=True)


def test_judge_exact_status_and_classes() -> None:
    badvers = _msg(("505", "4xx", "none"), verdict="invalid")
    assert judge(badvers, [_resp(505)]).passed
    assert judge(badvers, [_resp(400)]).passed
    assert not judge(badvers, [_resp(500)]).passed
    anything = _msg(("any", "fwd", "none"))
    assert all(judge(anything, r).passed for r in ([], [_resp(400)], [_resp(500)], [FWD]))
    with pytest.raises(ValueError, match="unknown outcome token"):
        judge(_msg(("bogus",)), [])


def test_judge_responses_and_forbidden_callids() -> None:
    response = _msg(("none",), kind="response")
    assert judge(response, []).passed
    v = judge(response, [_resp(400)])  # answering a response is always wrong
    assert (v.outcome, v.passed) == ("fwd", False)

    dbl = _msg(("non400", "fwd", "none"), forbid=("second@h",))
    assert judge(dbl, [_resp(200)]).passed
    v = judge(dbl, [_resp(200), _resp(400, "second@h")])
    assert (v.outcome, v.passed) == ("forbidden", False)
    assert "second@h" in v.detail

    unref = _msg((), verdict="unreferenced")
    assert judge(unref, [_resp(400)]).passed


@needs_corpus
def test_corpus_loads_and_every_token_is_understood() -> None:
    corpus = load_corpus()
    assert len(corpus) == 63
    ids = {m.id for m in corpus}
    assert {"wsinv", "dblreq", "insuf", "ipv6-good", "baddn-terminated", "test"} <= ids
    for m in corpus:  # every token in the manifest is one judge() knows
        for tokens in (m.accept, m.accept_lenient, m.accept_strict or ()):
            judge(TortureMessage(m.id, m.data, m.kind, m.method, m.transport, "valid", tokens), [])
    by_id = {m.id: m for m in corpus}
    assert by_id["insuf"].call_ids == ()
    assert len(by_id["multi01"].call_ids) == 2
    assert by_id["dblreq"].call_ids == ("dblreq.0ha0isndaksdj99sdfafnl3lk233412",)


@needs_corpus
def test_rounds_separate_call_id_and_transaction_twins() -> None:
    corpus = [m for m in load_corpus() if m.verdict != "unreferenced"]
    rounds = plan_rounds(corpus)
    assert sorted(m.id for r in rounds for m in r) == sorted(m.id for m in corpus)
    for r in rounds:
        ids = [c for m in r for c in (*m.call_ids, *m.forbid_callids)]
        keys = [m.txn_key for m in r if m.txn_key is not None]
        assert len(ids) == len(set(ids)), [m.id for m in r]
        assert len(keys) == len(set(keys)), [m.id for m in r]
        assert sum(1 for m in r if not m.call_ids) <= 1
    where = {m.id: i for i, r in enumerate(rounds) for m in r}
    for a, b in [
        ("escnull", "regescrt"),
        ("cparam01", "cparam02"),
        ("baddn", "baddn-terminated"),
        ("baddn", "badvers"),
        ("ipv6-good", "ipv6-bad"),
        ("ipv6-bug-abnf-3-colons", "ipv6-correct-abnf-2-colons"),
    ]:
        assert where[a] != where[b], (a, b)
    # The 8 RFC 5118 messages sharing one Call-ID bound the number of rounds.
    assert len(rounds) == 8


# --- against fake responders on loopback ------------------------------------------------------


class Fake:
    """A fake SIP element on 127.0.0.1 (UDP and TCP, one port). ``mode``:
    "400"/"200" answer every request with that status, "silent" never answers, "forward"
    re-sends each request unchanged to ``reply_port``, "naive" answers every request found
    in a datagram (so dblreq's trailing INVITE too). Replies go to the packet's source, or to
    ``reply_port`` when given (as RFC 3261 sends to the Via sent-by port)."""

    def __init__(self, mode: str, reply_port: int | None = None) -> None:
        self.mode = mode
        self.reply_port = reply_port
        self.port = free_port_both()
        self.received = 0

    def answers(self, data: bytes) -> Iterator[bytes]:
        chunks = [data]
        if self.mode == "naive":
            chunks = [c for c in re.split(rb"\r\n\r\n(?=[A-Z]+ )", data) if c.strip()]
        for chunk in chunks:
            p = parse_sip(chunk)
            if p.is_response or self.mode == "silent" or not p.start_line:
                continue
            if self.mode == "forward":
                yield data
                continue
            status = "200 OK" if self.mode == "200" else "400 Bad Request"
            head = chunk.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            keep = [
                h for h in head if re.match(rb"(?i)\s*(via|v|call-id|i|cseq|from|f|to|t)\s*:", h)
            ]
            yield b"\r\n".join(
                [f"SIP/2.0 {status}".encode(), *keep, b"Content-Length: 0", b"", b""]
            )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await udp.bind((LOOPBACK, self.port))
            listeners = await trio.open_tcp_listeners(self.port, host=LOOPBACK)
            nursery.start_soon(self._udp, udp)
            nursery.start_soon(trio.serve_listeners, self._tcp, listeners)
            task_status.started()

    async def _udp(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                data, addr = await sock.recvfrom(65535)
                self.received += 1
                dest = (LOOPBACK, self.reply_port) if self.reply_port else addr
                for out in self.answers(data):
                    await sock.sendto(out, dest)

    async def _tcp(self, stream: trio.SocketStream) -> None:
        buf = b""
        with trio.move_on_after(2):  # bounded: read until one whole message is in
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                head, sep, body = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                if sep and len(body) >= (int(m.group(1)) if m else 0):
                    break
        self.received += 1
        for out in self.answers(buf):
            await stream.send_all(out)
        await trio.sleep(WINDOW)  # keep the connection open while the checker listens
        await stream.aclose()


async def _run(nursery: trio.Nursery, fake: Fake, **kwargs: object) -> dict[str, object]:
    await nursery.start(fake.serve)
    notes: list[str] = []
    kwargs.setdefault("reply_ports", ())
    verdicts = await run_torture(fake.port, window=WINDOW, on_note=notes.append, **kwargs)  # type: ignore[arg-type]
    return {"verdicts": {v.id: v for v in verdicts}, "notes": notes}


@needs_corpus
async def test_fake_that_rejects_everything(nursery: trio.Nursery) -> None:
    res = await _run(nursery, Fake("400"))
    verdicts = res["verdicts"]
    assert isinstance(verdicts, dict)
    corpus = {m.id: m for m in load_corpus()}
    assert "test" not in verdicts  # unreferenced: not sent by default
    for vid, v in verdicts.items():
        m = corpus[vid]
        # Every reply found its message: over UDP by Call-ID (insuf: the round's only
        # message without one), over TCP by its connection; responses are never answered.
        assert v.outcome == ("none" if m.kind == "response" else "400"), (vid, v)
        assert v.transport == m.transport, vid
    assert not verdicts["wsinv"].passed  # valid: a 400 is wrong
    assert not verdicts["intmeth"].passed  # over TCP
    assert verdicts["badinv01"].passed and verdicts["insuf"].passed and verdicts["ncl"].passed
    assert verdicts["badbranch"].passed  # the RFC allows either
    assert verdicts["unreason"].passed and verdicts["scalarlg"].passed
    assert verdicts["dblreq"].outcome == "400"


@needs_corpus
async def test_fake_that_accepts_everything(nursery: trio.Nursery) -> None:
    res = await _run(nursery, Fake("200"), lenient=True)
    verdicts = res["verdicts"]
    assert isinstance(verdicts, dict)
    assert verdicts["wsinv"].passed and verdicts["longreq"].passed and verdicts["mpart01"].passed
    assert verdicts["quotbal"].passed  # invalid, but lenient allows liberal acceptance
    assert not verdicts["badinv01"].passed and verdicts["badinv01"].outcome == "200"
    assert not verdicts["clerr"].passed
    assert not verdicts["badvers"].passed  # only 505/4xx/none


@needs_corpus
async def test_silent_server_passes_by_default_not_strict(nursery: trio.Nursery) -> None:
    ids = ["wsinv", "badinv01", "unreason", "intmeth"]
    fake = Fake("silent")
    await nursery.start(fake.serve)
    default = await run_torture(fake.port, window=WINDOW, reply_ports=(), ids=ids)
    assert all(v.passed and v.outcome == "none" for v in default)
    strict = {
        v.id: v
        for v in await run_torture(fake.port, window=WINDOW, reply_ports=(), ids=ids, strict=True)
    }
    assert not strict["wsinv"].passed and not strict["intmeth"].passed  # must answer or forward
    assert not strict["badinv01"].passed  # strict wants the 400
    assert strict["unreason"].passed
    assert fake.received == 8


@needs_corpus
async def test_replies_to_the_via_port_and_forwards_are_seen(nursery: trio.Nursery) -> None:
    listen = free_port("udp")  # stands in for 5060: where RFC 3261 §18.2.2 sends replies
    res = await _run(
        nursery, Fake("400", reply_port=listen), ids=["wsinv", "badinv01"], reply_ports=(listen,)
    )
    verdicts = res["verdicts"]
    assert isinstance(verdicts, dict)
    assert verdicts["wsinv"].outcome == "400" and verdicts["badinv01"].outcome == "400"
    assert all(f"udp:{listen}" in v.replies[0] for v in verdicts.values())

    listen2 = free_port("udp")
    res = await _run(
        nursery,
        Fake("forward", reply_port=listen2),
        ids=["mpart01", "badinv01"],
        reply_ports=(listen2,),
    )
    verdicts = res["verdicts"]
    assert isinstance(verdicts, dict)
    assert verdicts["mpart01"].outcome == "fwd" and verdicts["mpart01"].passed
    assert verdicts["badinv01"].outcome == "fwd" and not verdicts["badinv01"].passed


@needs_corpus
async def test_trailing_octets_parsed_as_request_fail_dblreq(nursery: trio.Nursery) -> None:
    res = await _run(nursery, Fake("naive"), ids=["dblreq"])
    verdicts = res["verdicts"]
    assert isinstance(verdicts, dict)
    v = verdicts["dblreq"]
    assert (v.outcome, v.passed) == ("forbidden", False), v


@needs_corpus
async def test_udp_only_server_and_taken_reply_port(nursery: trio.Nursery) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
        await taken.bind((LOOPBACK, 0))
        taken_port = taken.getsockname()[1]
        res = await _run(
            nursery,
            Fake("400"),
            ids=["intmeth"],
            transport_ok={"udp"},
            reply_ports=(taken_port,),
        )
    verdicts, notes = res["verdicts"], res["notes"]
    assert isinstance(verdicts, dict) and isinstance(notes, list)
    assert verdicts["intmeth"].transport == "udp" and verdicts["intmeth"].outcome == "400"
    assert any("sent over UDP" in n for n in notes)
    assert any(f"{taken_port} is taken" in n for n in notes)


async def test_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await run_torture(("192.0.2.1", 5060), messages=[_msg(("none",))], reply_ports=())
