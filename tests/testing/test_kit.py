"""The route-testing kit itself (trio_sip.testing): the network's partitions and delay
distributions, exact-time expectations, the message log, the scripted agents, the
rtpengine fault modes, the invariants and the pytest fixtures. Virtual time."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from trio_sip.rtpengine import ClientConfig, NgReplyError, RtpengineClient, sim_endpoints
from trio_sip.rtpengine.protocol import BadNgReply
from trio_sip.runtime.server import Server
from trio_sip.script.engine import ScriptEngine
from trio_sip.sip.message import SipRequest
from trio_sip.testing import (
    Callee,
    Caller,
    ExpectationFailed,
    FakeRtpengine,
    LinkSpec,
    SimNetwork,
    SimUA,
    Watch,
    assert_sent_at,
    exponential_delay,
    leftovers,
    lognormal_delay,
    normal_delay,
    sent_times,
    sip_log,
    start_server,
    stop_server,
)
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")
PROXY = Address("127.0.0.1", 5060)
A = Address("127.0.0.2", 5060)
B = Address("127.0.0.3", 5060)
NG = Address("127.0.0.1", 2223)


# -- the network -------------------------------------------------------------------------


async def test_a_partition_heals_by_itself(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1, default=LinkSpec(delay=(0.1, 0.1))) as net:
        a, b = SimUA(net, A), SimUA(net, B)
        t0 = trio.current_time()
        p = net.partition([A], [B], heal_after=5.0)
        assert net.partitions == [p] and p.heals_at == t0 + 5.0
        await a.send(a.request("OPTIONS", "sip:b@127.0.0.3"), B)  # into the cut: lost
        await trio.sleep(4.0)
        assert net.partitioned(A, B) and net.partitioned(B, A)
        await trio.sleep(1.0)
        assert not net.partitioned(A, B) and net.partitions == []
        await a.send(a.request("OPTIONS", "sip:b@127.0.0.3"), B)
        got = await b.expect_request("OPTIONS", at=t0 + 5.1)
        assert got.source == A
        lost = net.entries(fate="lost")
        assert [(e.reason, e.time) for e in lost] == [("partition", t0)]


async def test_heal_one_partition_of_several(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net:
        p1 = net.partition([A], [B])
        p2 = net.partition([A], [PROXY])
        net.heal(p1)
        assert net.partitions == [p2]
        assert not net.partitioned(A, B) and net.partitioned(PROXY, A)
        net.heal()
        assert net.partitions == []
        with pytest.raises(ValueError):
            net.partition([A], [B], heal_after=-1)


@pytest.mark.parametrize("make", [
    lambda: exponential_delay(0.05, minimum=0.01, maximum=0.3),
    lambda: normal_delay(0.1, 0.03, minimum=0.02, maximum=0.2),
    lambda: lognormal_delay(0.05, 1.0, maximum=0.5),
])
def test_delay_distributions_are_seeded_and_bounded(make: Callable[[], Any]) -> None:
    fn = make()
    spec = LinkSpec(delay=fn)
    draws = [spec.sample_delay(random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same RNG state, same draw
    rng = random.Random(1)
    many = [spec.sample_delay(rng) for _ in range(2000)]
    low, high = min(many), max(many)
    assert low >= 0 and high < math.inf and len(set(many)) > 1000
    assert fn.__name__.endswith(")")


def test_delay_distributions_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        exponential_delay(0)
    with pytest.raises(ValueError):
        normal_delay(0.1, -1)
    with pytest.raises(ValueError):
        lognormal_delay(0.1, 1, minimum=2, maximum=1)


async def test_exponential_delay_on_a_link(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=3) as net:
        net.set_link(A, B, LinkSpec(delay=exponential_delay(0.2, minimum=0.05, maximum=1.0)))
        a, b = SimUA(net, A), SimUA(net, B)
        for _ in range(200):
            await a.send(a.request("MESSAGE", "sip:b@127.0.0.3"), B)
        await trio.sleep(2)
        delays = [e.time - e.sent_at for e in net.entries(src=A, dst=B)]
        assert len(delays) == 200 == len(b.requests())
        assert min(delays) >= 0.05 and max(delays) <= 1.0
        assert 0.15 < sum(delays) / len(delays) < 0.35  # mean 0.05 + ~0.2, capped


# -- exact times and the message log ----------------------------------------------------------


async def test_timer_a_exactly_and_408_at_fr_inv(autojump_clock: trio.testing.MockClock,
                                                write_routes: Callable[..., str]) -> None:
    """routes/stateful.lua relays to a UAS that never answers: the proxy retransmits the
    INVITE at T1, 2*T1, 4*T1... (Timer A) and answers 408 when fr_inv... here fr: no
    provisional came, so fr_timer (2 s) ends the branch."""
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=STATEFUL,
                           config={"tm": {"fr_timer": 2000, "fr_inv_timer": 5000}})
        alice = SimUA(net, A)
        SimUA(net, B)  # bob: bound, and silent
        t0 = trio.current_time()
        await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3"), PROXY)
        await alice.expect_response(100, at=t0)
        await alice.expect_response(408, at=t0 + 2.0)
        assert_sent_at(net, [0.0, 0.5, 1.5], relative_to=t0, src=PROXY, dst=B,
                       method="INVITE", requests=True)
        with pytest.raises(ExpectationFailed, match="sent at"):
            assert_sent_at(net, [0.0, 0.5], relative_to=t0, src=PROXY, dst=B,
                           method="INVITE", requests=True)
        assert sent_times(net, relative_to=t0, src=PROXY, dst=A, status=408) == [2.0]
        log = sip_log(net, dst=B)
        assert [x.summary for x in log][:3] == ["INVITE"] * 3
        assert log[-1].summary == "CANCEL" or "CANCEL" not in [x.summary for x in log]
        nursery.cancel_scope.cancel()


async def test_at_says_when_it_came(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1, default=LinkSpec(delay=(0.25, 0.25))) as net:
        a, b = SimUA(net, A), SimUA(net, B)
        b.answer(486, after=1.0)
        t0 = trio.current_time()
        await a.send(a.request("INVITE", "sip:b@127.0.0.3"), B)
        with pytest.raises(ExpectationFailed, match=r"nothing matching arrived by"):
            await a.expect_response(486, at=t0 + 1.0)  # too early: it is still on its way
        with pytest.raises(ExpectationFailed, match=r"arrived at .* expected at .*off by -0\.5"):
            await a.expect_response(486, at=t0 + 2.0)  # it came, 0.5 s before
        resp = await a.expect_response(486, at=t0 + 1.5)
        assert resp.reason == "Busy Here"
        with pytest.raises(ExpectationFailed, match="nothing matching arrived"):
            await a.expect_response(200, at=t0 + 3.0)
        assert trio.current_time() == pytest.approx(t0 + 3.0)
        await a.expect_nothing(t0 + 10)
        await a.send(a.request("MESSAGE", "sip:b@127.0.0.3"), B)
        with pytest.raises(ExpectationFailed, match="expected nothing"):
            await a.expect_nothing(t0 + 12)


# -- scripted agents through the server ---------------------------------------------------


async def run_call(behaviour: str, **kw: Any) -> tuple[Caller, Callee, Server, Watch]:
    with Watch() as watch:
        async with SimNetwork(seed=5, default=LinkSpec(delay=(0.01, 0.01))) as net, \
                trio.open_nursery() as nursery:
            server = await start_server(nursery, net, routes=STATEFUL,
                                        config={"tm": {"fr_inv_timer": 10000}})
            bob = Callee(net, B, "bob", behaviour, final_after=1.0, **kw)
            alice = Caller(net, A, "alice", PROXY, [f"sip:bob@{B}"], hold=2.0)
            async with trio.open_nursery() as agents:
                agents.start_soon(bob.run)
                agents.start_soon(alice.run)
                alice.dial()
                await trio.sleep(60)
                agents.cancel_scope.cancel()
            problems = leftovers(server)
            assert not problems, problems
            await stop_server(server)
            nursery.cancel_scope.cancel()
    return alice, bob, server, watch


@pytest.mark.parametrize(("behaviour", "kw", "final"), [
    ("answer", {}, 200),
    ("busy", {}, 486),
    ("decline", {}, 603),
    ("decline", {"code": 604}, 604),
    ("busy", {"code": 480}, 480),
    ("ring", {}, 408),       # fr_inv_timer (10 s) after the 180
])
async def test_callee_behaviours(autojump_clock: trio.testing.MockClock, behaviour: str,
                                 kw: dict[str, Any], final: int) -> None:
    alice, bob, _, watch = await run_call(behaviour, **kw)
    assert {s for _, s, _ in alice.finals} == {final}
    if final == 200:
        dialog = next(iter(alice.dialogs.values()))
        assert dialog.bye_status == 200 and bob.legs and next(iter(bob.legs.values())).byes
    assert watch.problems() == [] and watch.unanswered() == []
    assert watch.made["transactions"] >= 1 and watch.made["branches"] >= 1
    invite = next(i for i, (m, _, _) in watch.transactions.items() if m == "INVITE")
    assert watch.finals[invite] == [final]
    assert watch.finals_for(alice.call_id) == [final]


def test_watch_judges_the_finals_sent_upstream() -> None:
    watch = Watch()
    done = trio.Event()
    for i, method in enumerate(["INVITE", "INVITE", "INVITE", "BYE", "INVITE"]):
        watch.transactions[i] = (method, f"c{i}", done)
    watch.finals = {0: [200, 200], 1: [486, 487], 2: [200, 603], 3: [200, 200], 4: [487, 200]}
    assert watch.final_problems() == [
        "INVITE#1: several non-2xx finals upstream [486, 487]",
        "INVITE#2: a non-2xx after a 2xx upstream [200, 603]",
        "BYE#3: several finals upstream [200, 200]",
    ]
    assert watch.late_2xx() == 1
    watch.transactions[5] = ("CANCEL", "c5", done)
    assert watch.unanswered() == []  # not finished yet
    done.set()
    assert watch.unanswered() == ["CANCEL#5"]


async def test_callee_crash_in_the_dialog(autojump_clock: trio.testing.MockClock) -> None:
    alice, bob, _, _ = await run_call("crash", crash_after=0.5)
    assert bob.crashed_at is not None
    dialog = next(iter(alice.dialogs.values()))
    assert dialog.bye_status == 408  # the BYE went to a dead host: Timer F


def test_callee_refuses_unknown_behaviours() -> None:
    with pytest.raises(ValueError, match="behaviour"):
        Callee(None, B, "x", "dance")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code="):
        Callee(None, B, "x", "answer", code=486)  # type: ignore[arg-type]


async def test_watch_reports_a_resume_after_the_transaction(
        autojump_clock: trio.testing.MockClock) -> None:
    """A coroutine resumed on a transaction whose task ended is reported."""
    engine = ScriptEngine([])
    engine.load_string("function r() coroutine.yield(1); return 2 end")
    ended = trio.Event()
    ended.set()
    ctx = SimpleNamespace(transaction=SimpleNamespace(finished=ended, index=9), engine=None,
                          msg=None)
    with Watch() as watch:
        step = engine.start(engine.function("r"), ctx)  # type: ignore[arg-type]
        assert step.yielded
        engine.resume(step.co_id, ctx, None)  # type: ignore[arg-type]
    assert watch.resumes == 1 and len(watch.late_resumes) == 1
    assert "resumed at" in watch.problems()[0] and "#9" in watch.problems()[0]
    assert ScriptEngine.resume is not Watch  # restored
    with Watch(), pytest.raises(RuntimeError):
        Watch().__enter__()


async def test_waits_cancelled_by_a_shutdown(autojump_clock: trio.testing.MockClock,
                                             write_routes: Callable[..., str]) -> None:
    """A route waiting when the server stops: its wait is cancelled (not left running),
    its coroutine abandoned, and nothing of it stays in memory."""
    routes = write_routes("""
function ksr_request_route()
    KSR.async.ms_sleep(5000)
    KSR.sl.sl_send_reply(200, "late")
end
""")
    with Watch() as watch:
        async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
            server = await start_server(nursery, net, routes=routes)
            alice = SimUA(net, A)
            await alice.send(alice.request("MESSAGE", "sip:b@127.0.0.3"), PROXY)
            await trio.sleep(1)
            assert watch.ops == {"started": 1, "finished": 0, "cancelled": 0}
            assert "neither finished nor cancelled" in watch.problems()[0]
            await stop_server(server)
            assert watch.ops == {"started": 1, "finished": 0, "cancelled": 1}
            assert watch.problems() == [] and leftovers(server) == []
            await trio.sleep(10)
            assert alice.responses() == []  # never the late 200
            nursery.cancel_scope.cancel()
        del server
        assert watch.alive() == {"transactions": 0, "branches": 0}


async def test_a_stopped_server_is_freed(autojump_clock: trio.testing.MockClock) -> None:
    _, _, server, watch = await run_call("answer")
    del server
    assert watch.servers_alive() == 0


async def test_objects_return_to_zero(autojump_clock: trio.testing.MockClock) -> None:
    _, _, server, watch = await run_call("answer")
    del server
    assert watch.alive() == {"transactions": 0, "branches": 0}


# -- the rtpengine fake ----------------------------------------------------------------------


SDP = b"v=0\r\no=a 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


async def ng_client(net: SimNetwork, nursery: trio.Nursery, sock: str, retr: int = 2
                    ) -> RtpengineClient:
    client = RtpengineClient(ClientConfig(sock=(sock,), ping_mode=0, tout_ms=500, retr=retr),
                             open_endpoint=sim_endpoints(net))
    await nursery.start(client.run)
    return client


def offer(cid: str) -> dict[str, Any]:
    return {"command": "offer", "call-id": cid, "from-tag": "ft", "sdp": SDP}


@pytest.mark.parametrize("mode", ["answer", "error", "garbage", "slow", "silent", "flaky"])
async def test_rtpengine_fault_modes(autojump_clock: trio.testing.MockClock, mode: str) -> None:
    async with SimNetwork(seed=2) as net, trio.open_nursery() as nursery:
        ng = FakeRtpengine(net, NG, mode=mode, delay=0.7, flaky=0.3, seed=4)
        client = await ng_client(net, nursery, ng.sock, retr=6 if mode == "flaky" else 2)
        results = []
        for i in range(6):
            t0 = trio.current_time()
            try:
                reply = await client.request(offer(f"c{i}"), call_id=f"c{i}")
                results.append(("ok", reply["x-call-id"], trio.current_time() - t0))
            except NgReplyError as exc:
                results.append(("error", str(exc), 0.0))
            except Exception as exc:  # timeouts, no node, bad replies
                results.append((type(exc).__name__, "", trio.current_time() - t0))
        if mode == "answer":
            assert [r[:2] for r in results] == [("ok", f"c{i}") for i in range(6)]
            assert ng.calls() == {f"c{i}" for i in range(6)}
        elif mode == "error":
            assert all(r[0] == "error" and "Unknown call-id" in r[1] for r in results)
        elif mode == "slow":
            # 0.7 s late: the retransmission (same cookie) at the 0.5 s timeout finds the
            # command in progress; the one answer arrives at 0.7
            assert all(r[0] == "ok" and r[2] == pytest.approx(0.7) for r in results)
            assert len(ng.commands("offer")) == 12
        elif mode == "flaky":
            assert [r[:2] for r in results] == [("ok", f"c{i}") for i in range(6)]
            cookies = {g.cookie for g in ng.commands("offer")}
            assert len(ng.commands("offer")) > len(cookies)  # some needed a retransmission
        else:  # silent, garbage: nothing usable comes back
            assert all(r[0] != "ok" for r in results)
            if mode == "garbage":
                assert client.statistics()["bad_replies"] >= 1
                assert results[0][0] == "BadNgReply"
        nursery.cancel_scope.cancel()


def test_rtpengine_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        FakeRtpengine(None, NG, mode="dead")  # type: ignore[arg-type]
    assert issubclass(BadNgReply, Exception)


# -- the pytest plugin ---------------------------------------------------------------------------


async def test_plugin_fixtures(autojump_clock: trio.testing.MockClock, sip_server: Any,
                               sip_ua: Callable[..., SimUA], sip_net: SimNetwork) -> None:
    server = await sip_server(routes=STATEFUL)
    alice = sip_ua("127.0.0.2")
    bob = sip_ua("127.0.0.3")
    bob.answer(200, after=1.5, ringing=0.5)
    t0 = trio.current_time()
    await alice.send(alice.request("INVITE", "sip:bob@127.0.0.3"), server.address())
    await alice.expect_response(180, at=t0 + 0.5)
    ok = await alice.expect_response(200, at=t0 + 1.5)
    assert ok.cseq_method == "INVITE" and sip_net.statistics().lost == 0
    assert isinstance(bob.requests()[0], SipRequest)


def test_plugin_needs_virtual_time(tmp_path: Path) -> None:
    """A test on the real clock is told what to add, not left hanging."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_it.py").write_text("async def test_no_clock(sip_net):\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "add pytest-trio's `autojump_clock` fixture".lower() in out.stdout.lower()


#: what a project does when trio-sip may be installed without its entry point (as
#: tests/conftest.py does)
CONFTEST = """
from trio_sip.testing import pytest_plugin

def pytest_configure(config):
    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "trio_sip.testing.pytest_plugin")
"""
