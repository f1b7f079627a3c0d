"""Ring 2: what the stateful proxy decides (RFC 3261 §16.7-16.10, Kamailio tm/tmx), through
the whole server on the simulated network, in virtual time: best-response choice,
challenge aggregation, CANCEL, forking (parallel, serial by q, 6xx), the transaction
routes and their pseudo-variables, ACK handling, RFC 2543 matching."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.routes import proxy_routes
from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.testing import LinkSpec, SimNetwork, SimUA, start_server
from trio_sip.transport.base import Address

REPO = Path(__file__).resolve().parents[2]
STATEFUL = str(REPO / "routes" / "stateful.lua")
PROXY = Address("127.0.0.1", 5060)
UAC = Address("127.0.0.2", 5060)
UAS1 = Address("127.0.0.3", 5060)
UAS2 = Address("127.0.0.4", 5060)
UAS3 = Address("127.0.0.5", 5060)


def routes(body: str, extra: str = "") -> str:
    """The request route of these tests: runs counted in $shv(runs), then ``body``."""
    return proxy_routes(body, extra, count_runs=True)


def fork_to(*targets: Address) -> str:
    return "".join(f"  KSR.corex.append_branch_uri('sip:bob@{t}')\n" for t in targets)


class Callee:
    """A UAS: the first copy of each INVITE gets ``steps`` ((delay, code) pairs, delays
    from the INVITE's arrival); a CANCEL gets 200 and, if no final was sent, a 487;
    ACKs are recorded; other requests get 200."""

    def __init__(self, ua: SimUA, nursery: trio.Nursery, *steps: tuple[float, int],
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        self.ua = ua
        self.nursery = nursery
        self.steps = steps
        self.headers = list(headers)
        self.invite: SipRequest | None = None
        self.final_sent = 0
        ua.on_request = self._on_request

    def _respond(self, req: SipRequest, code: int, source: Address) -> bytes:
        hdrs = self.headers if code >= 300 else []
        return self.ua.response_to(req, code, "R", headers=hdrs)

    def _on_request(self, ua: SimUA, req: SipRequest, source: Address) -> None:
        if req.method == "INVITE":
            if self.invite is not None:
                return  # a retransmission
            self.invite = req
            for delay, code in self.steps:
                self.nursery.start_soon(self._later, delay, req, code, source)
        elif req.method == "CANCEL":
            ua.send_soon(source, ua.response_to(req, 200, "OK"))
            if self.invite is not None and not self.final_sent:
                self.final_sent = 487
                ua.send_soon(source, ua.response_to(self.invite, 487, "Terminated"))
        elif req.method != "ACK":
            ua.send_soon(source, ua.response_to(req, 200, "OK"))

    async def _later(self, delay: float, req: SipRequest, code: int, source: Address) -> None:
        await trio.sleep(delay)
        if code >= 200:
            if self.final_sent:
                return
            self.final_sent = code
        elif self.final_sent:
            return
        await self.ua.send(self._respond(req, code, source), source)


class Call:
    """The caller: fixed INVITE bytes (so a resend is a retransmission), its ACK and CANCEL."""

    def __init__(self, ua: SimUA, target: Address = UAS1, *, name: str = "c1",
                 branch: str | None = None) -> None:
        self.ua = ua
        self.ruri = f"sip:bob@{target}"
        self.branch = branch if branch is not None else f"z9hG4bK{name}"
        self.call_id = f"{name}@test"
        self.invite = self._make("INVITE")

    def _make(self, method: str, **kw: Any) -> bytes:
        data = self.ua.request(method, self.ruri, branch=self.branch or "x", call_id=self.call_id,
                               **kw)
        if not self.branch:  # RFC 2543: a Via without branch parameter
            data = data.replace(b";branch=x", b"")
        return data

    async def send(self) -> None:
        await self.ua.send(self.invite, PROXY)

    async def cancel(self) -> None:
        await self.ua.send(self._make("CANCEL"), PROXY)

    async def ack(self, final: SipResponse) -> None:
        await self.ua.send(self._make("ACK", to_tag=final.to_tag), PROXY)

    async def ack_2xx(self, ok: SipResponse) -> None:
        """The ACK of a 2xx: a new transaction (new branch), along the route set (§13.2.2.4)."""
        rr = ok.get("Record-Route")
        contact = ok.get("Contact") or ""
        target = contact.strip("<>") if contact else self.ruri
        hdrs = [("Route", rr)] if rr else []
        await self.ua.send(self.ua.request("ACK", target, call_id=self.call_id, to_tag=ok.to_tag,
                                           headers=hdrs), PROXY)


def finals(ua: SimUA, method: str = "INVITE") -> list[int]:
    return [r.status for r in ua.responses() if r.status >= 200 and r.cseq_method == method]


def at(ua: SimUA, msg: object) -> float:
    return next(r.at for r in ua.received if r.msg is msg)


async def settle(server, *, after: float = 200.0) -> None:  # type: ignore[no-untyped-def]
    """After every timer ran out, nothing is left: no transaction in the tables, no
    transaction task, no error."""
    await trio.sleep(after)
    tm = server.core.tm
    assert tm.statistics()["inuse_transactions"] == 0
    assert not tm.clients
    assert not tm.nursery.child_tasks
    assert tm.statistics().get("tx_errors", 0) == 0


# -- choosing the response ---------------------------------------------------------------


async def test_401_and_407_challenges_are_aggregated(autojump_clock, write_routes) -> None:
    """§16.7 step 7: the 401/407 sent upstream carries every branch's challenge."""
    async with SimNetwork(seed=21) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            fork_to(UAS2, UAS3) + "  KSR.tm.t_relay()\n")))
        uac = SimUA(net, UAC)
        Callee(SimUA(net, UAS1), nursery, (0, 401),
               headers=[("WWW-Authenticate", 'Digest realm="one", nonce="1"')])
        Callee(SimUA(net, UAS2), nursery, (0.1, 407),
               headers=[("Proxy-Authenticate", 'Digest realm="two", nonce="2"')])
        Callee(SimUA(net, UAS3), nursery, (0.2, 401),
               headers=[("WWW-Authenticate", 'Digest realm="three", nonce="3"')])
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == 401  # 401 before 407 (both preferred 4xx)
        www = final.get_all("WWW-Authenticate")
        assert sorted(www) == ['Digest realm="one", nonce="1"', 'Digest realm="three", nonce="3"']
        assert final.get_all("Proxy-Authenticate") == ['Digest realm="two", nonce="2"']
        nursery.cancel_scope.cancel()


async def test_503_goes_upstream_as_500(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=22) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes("  KSR.tm.t_relay()\n")))
        uac = SimUA(net, UAC)
        Callee(SimUA(net, UAS1), nursery, (0, 503))
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == 500  # §16.7 step 6
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("codes", "best"), [
    ((486, 302, 603), 603),  # 6xx first
    ((486, 302, 500), 302),  # then 3xx
    ((500, 486, 404), 404),  # then 4xx, lowest code of the plain ones
    ((486, 404, 401), 401),  # 401/407/415/420/484 before the other 4xx
    ((404, 484, 500), 484),
    ((415, 407, 404), 407),
    ((500, 503, 502), 500),  # 5xx last; ties: lowest code (503 is sent as 500 anyway)
    ((503, 502, 504), 502),
])
async def test_best_response_over_three_branches(autojump_clock, write_routes,
                                                 codes: tuple[int, int, int], best: int) -> None:
    async with SimNetwork(seed=23) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            fork_to(UAS2, UAS3) + "  KSR.tm.t_relay()\n")))
        uac = SimUA(net, UAC)
        for i, (addr, code) in enumerate(zip((UAS1, UAS2, UAS3), codes, strict=True)):
            Callee(SimUA(net, addr), nursery, (0.1 * i, code))
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == best
        await trio.sleep(1)
        assert set(finals(uac)) == {best}
        nursery.cancel_scope.cancel()


# -- CANCEL ---------------------------------------------------------------------------------


async def test_cancel_racing_a_200(autojump_clock, write_routes) -> None:
    """The CANCEL reaches the proxy, the callee's 200 is already on its way: the 200
    still goes to the caller (§16.7 step 5, any 2xx is forwarded), exactly one final
    (the 2xx), and the CANCEL is answered 200 (§16.10)."""
    async with SimNetwork(seed=24, default=LinkSpec(delay=(0.1, 0.1))) as net, \
            trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.rr.record_route()\n  KSR.tm.t_relay()\n")))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        callee = Callee(uas, nursery, (0, 180), (0.85, 200))  # INVITE at 0.1: 200 at 0.95
        call = Call(uac)
        await call.send()
        await uac.expect_response(180)  # at 0.3
        await trio.sleep_until(1.0)
        await call.cancel()  # at the proxy at 1.1; the 200 arrives there at 1.15
        ok_cancel = await uac.expect_response(200, method="CANCEL")
        ok = await uac.expect_response(200, method="INVITE")
        assert at(uac, ok_cancel) == pytest.approx(1.2)
        assert at(uac, ok) == pytest.approx(1.25)
        await call.ack_2xx(ok)
        await uas.expect_request("ACK")
        await trio.sleep(10)
        assert finals(uac) == [200]  # no 487, no second final
        assert callee.final_sent == 200
        # the proxy's CANCEL reached the callee after its 200: answered 200, no effect
        assert len(uas.times(0, "CANCEL")) == 1
        assert server.core.tm.stats["cancels"] == 1
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_cancel_before_any_provisional_is_held_until_the_first_1xx(
        autojump_clock, write_routes) -> None:
    """§16.10 / §9.1: a CANCEL is not sent before a provisional; it goes out on the first."""
    async with SimNetwork(seed=25) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_relay()\n")))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        Callee(uas, nursery, (2, 180))  # silent for 2 s
        call = Call(uac)
        await call.send()
        await trio.sleep(0.2)
        await call.cancel()
        await uac.expect_response(200, method="CANCEL")
        cancel = await uas.expect_request("CANCEL")
        assert cancel.at == 2.0  # held until the 180, sent at once then
        assert uas.times(0, "INVITE") == [0, 0.5, 1.5]  # Timer A went on meanwhile
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        assert at(uac, final) == 2.0
        await call.ack(final)
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_cancel_with_a_callee_that_never_answers(autojump_clock, write_routes) -> None:
    """Kamailio cancel_b_method 1: nothing to CANCEL until a 1xx; the branch ends at fr
    (local 408) and the caller gets 487 then."""
    async with SimNetwork(seed=26) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_relay()\n")))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        call = Call(uac)
        await call.send()
        await trio.sleep(1)
        await call.cancel()
        final = await uac.expect_response(final=True, method="INVITE", within=60)
        assert (final.status, at(uac, final)) == (487, 30.0)
        assert uas.times(0, "CANCEL") == []
        await call.ack(final)
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_6xx_on_one_of_three_branches_cancels_the_others(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=27) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            fork_to(UAS2, UAS3) + "  KSR.tm.t_relay()\n")))
        uac = SimUA(net, UAC)
        ua1, ua2, ua3 = SimUA(net, UAS1), SimUA(net, UAS2), SimUA(net, UAS3)
        Callee(ua1, nursery, (0, 180))
        Callee(ua2, nursery, (0, 180))
        Callee(ua3, nursery, (0.5, 603))
        call = Call(uac)
        await call.send()
        final = await uac.expect_response(final=True)
        assert final.status == 603
        assert ua1.times(0, "CANCEL") == [0.5] and ua2.times(0, "CANCEL") == [0.5]
        await trio.sleep(5)
        assert set(finals(uac)) == {603}
        await call.ack(final)
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_no_new_branch_after_the_caller_cancelled(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=28) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_on_failure('retry')\n  KSR.tm.t_relay()\n",
            "function retry()\n"
            f"  KSR.pv.sets('$ru', 'sip:alice@{UAS2}')\n"
            "  KSR.pv.seti('$shv(relay)', KSR.tm.t_relay())\n"
            "end\n")))
        uac, ua2 = SimUA(net, UAC), SimUA(net, UAS2)
        Callee(SimUA(net, UAS1), nursery, (0, 180))
        call = Call(uac)
        await call.send()
        await uac.expect_response(180)
        await call.cancel()
        final = await uac.expect_response(final=True, method="INVITE")
        assert final.status == 487
        await trio.sleep(1)
        assert ua2.times(0, "INVITE") == []  # §16.10: no new branches
        nursery.cancel_scope.cancel()


# -- the transaction routes -------------------------------------------------------------------


async def test_branch_route_drops_one_branch(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=29) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            fork_to(UAS2) + "  KSR.tm.t_on_branch('br')\n  KSR.tm.t_relay()\n",
            "function br()\n"
            f"  if KSR.pv.get('$ru') == 'sip:bob@{UAS2}' then KSR.x.drop() end\n"
            "end\n")))
        uac, ua1, ua2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)
        Callee(ua1, nursery, (0, 200))
        Callee(ua2, nursery, (0, 486))
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == 200
        assert ua2.times(0, "INVITE") == []
        nursery.cancel_scope.cancel()


async def test_every_branch_dropped_gives_one_stateful_error_reply(
        autojump_clock, write_routes) -> None:
    """t_relay fails: the transaction answers the error itself (Kamailio t_relay_to,
    kill_transaction). Before, it answered nothing and sent a 408 at fr."""
    async with SimNetwork(seed=30) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_on_branch('br')\n"
            "  KSR.pv.seti('$shv(relay)', KSR.tm.t_relay())\n",
            "function br() KSR.x.drop() end\n")))
        uac = SimUA(net, UAC)
        call = Call(uac)
        await call.send()
        final = await uac.expect_response(final=True)
        assert final.status == 500
        assert server.core.shv["relay"] == -1
        await call.ack(final)
        await trio.sleep(60)
        assert finals(uac) == [500]
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_onreply_route_drops_a_1xx(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=31) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_on_reply('rpl')\n  KSR.tm.t_relay()\n",
            "function rpl()\n"
            "  if KSR.pv.get('$rs') == 180 then KSR.x.drop() end\n"
            "end\n")))
        uac = SimUA(net, UAC)
        Callee(SimUA(net, UAS1), nursery, (0, 180), (0.1, 183), (0.2, 200))
        await Call(uac).send()
        await uac.expect_response(200)
        assert [r.status for r in uac.responses()] == [100, 183, 200]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("drop", "best"), [(False, 401), (True, 486)])
async def test_t_drop_replies_forgets_the_previous_leg(autojump_clock, write_routes,
                                                      drop: bool, best: int) -> None:
    async with SimNetwork(seed=32) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_on_failure('next')\n  KSR.tm.t_relay()\n",
            "function next()\n"
            + ("  KSR.tm.t_drop_replies('a')\n" if drop else "")
            + f"  KSR.pv.sets('$ru', 'sip:bob@{UAS2}')\n"
            "  KSR.tm.t_relay()\n"
            "end\n")))
        uac = SimUA(net, UAC)
        Callee(SimUA(net, UAS1), nursery, (0, 401))
        Callee(SimUA(net, UAS2), nursery, (0, 486))
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == best
        nursery.cancel_scope.cancel()


async def test_serial_forking_by_q_with_t_load_contacts(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=33) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            f"  KSR.corex.append_branch_uri_q('sip:bob@{UAS2}', '0.5')\n"
            f"  KSR.corex.append_branch_uri_q('sip:bob@{UAS3}', '0.5')\n"
            f"  KSR.corex.append_branch_uri_q('sip:carol@{UAS3}', '0.1')\n"
            "  KSR.tm.t_load_contacts()\n"
            "  KSR.tm.t_next_contacts()\n"
            "  KSR.tm.t_on_failure('next')\n"
            "  KSR.tm.t_relay()\n",
            "function next()\n"
            "  if KSR.tm.t_next_contacts() > 0 then\n"
            "    KSR.tm.t_on_failure('next')\n"
            "    KSR.tm.t_relay()\n"
            "  end\n"
            "end\n")))
        uac = SimUA(net, UAC)
        ua1, ua2, ua3 = SimUA(net, UAS1), SimUA(net, UAS2), SimUA(net, UAS3)
        Callee(ua1, nursery, (1, 486))  # q 1.0 (the R-URI): first, alone
        Callee(ua2, nursery, (1, 480))  # q 0.5: second, in parallel with bob@UAS3
        c3 = Callee(ua3, nursery, (1, 486))

        def ua3_requests(ua: SimUA, req: SipRequest, source: Address) -> None:
            if req.method == "INVITE" and req.ruri_text.startswith("sip:carol"):
                ua.send_soon(source, ua.response_to(req, 200, "OK", to_tag="carol"))
            else:
                c3._on_request(ua, req, source)

        ua3.on_request = ua3_requests
        await Call(uac).send()
        final = await uac.expect_response(final=True, within=20)
        assert final.status == 200 and final.to_tag == "carol"
        first: dict[str, float] = {}  # each branch's first copy (Timer A resends it)
        for ua in (ua1, ua2, ua3):
            for r in ua.received:
                if isinstance(r.msg, SipRequest) and r.msg.method == "INVITE":
                    first.setdefault(r.msg.ruri_text, r.at)
        invites = sorted((t, uri) for uri, t in first.items())
        assert invites == [(0, f"sip:bob@{UAS1}"), (1, f"sip:bob@{UAS2}"),
                           (1, f"sip:bob@{UAS3}"), (2, f"sip:carol@{UAS3}")]
        nursery.cancel_scope.cancel()


async def test_t_replicate_sends_a_copy_whose_replies_are_absorbed(
        autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=34) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            f"  KSR.tm.t_replicate('sip:{UAS2}')\n  KSR.tm.t_relay()\n")))
        uac, ua1, ua2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)

        def busy(ua: SimUA, req: SipRequest, source: Address) -> None:
            ua.send_soon(source, ua.response_to(req, 500, "Oops"))

        Callee(ua1, nursery)  # answers MESSAGE with 200
        ua2.on_request = busy
        msg = uac.request("MESSAGE", f"sip:bob@{UAS1}", body=b"hello")
        await uac.send(msg, PROXY)
        ok = await uac.expect_response(final=True)
        await trio.sleep(1)
        assert ok.status == 200 and finals(uac, "MESSAGE") == [200]
        assert ua2.times(0, "MESSAGE") == [0]
        stats = server.core.tm.statistics()
        assert stats["replicated"] == 1 and stats["replicate_replies"] == 1
        await settle(server)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("which", "cancelled"), [("others", {2}), ("all", {1, 2}),
                                                  ("this", {1})])
async def test_tmx_t_cancel_branches(autojump_clock, write_routes, which: str,
                                     cancelled: set[int]) -> None:
    async with SimNetwork(seed=35) as net, trio.open_nursery() as nursery:
        await start_server(nursery, net, routes=write_routes(routes(
            fork_to(UAS2) + "  KSR.tm.t_on_reply('rpl')\n  KSR.tm.t_relay()\n",
            "function rpl()\n"
            "  if KSR.pv.get('$rs') == 183 then\n"
            f"    KSR.tmx.t_cancel_branches('{which}')\n"
            "  end\n"
            "end\n")))
        uac, ua1, ua2 = SimUA(net, UAC), SimUA(net, UAS1), SimUA(net, UAS2)
        Callee(ua1, nursery, (0.5, 183), (5, 200))
        Callee(ua2, nursery, (0, 180), (6, 200))
        await Call(uac).send()
        final = await uac.expect_response(final=True, within=20)
        got = {i for i, ua in ((1, ua1), (2, ua2)) if ua.times(0, "CANCEL")}
        assert got == cancelled
        for ua in (ua1, ua2):
            assert ua.times(0, "CANCEL") in ([], [0.5])
        assert final.status == (487 if which == "all" else 200)
        nursery.cancel_scope.cancel()


async def test_pseudo_variables_per_route_type(autojump_clock, write_routes) -> None:
    """$T_reply_code and $T_branch_idx (Kamailio tm): request route: the last final sent
    (0 before any); branch route: the branch being made; onreply and branch-failure
    routes: the reply and its branch; failure route: the winning reply, and the branch
    with the last final reply."""
    log = (
        "LOG = LOG or {}\n"
        "function note(where)\n"
        "  table.insert(LOG, where .. ':' .. tostring(KSR.pv.get('$T_reply_code')) .. ':' ..\n"
        "    tostring(KSR.pv.get('$T_branch_idx')))\n"
        "end\n"
    )
    async with SimNetwork(seed=36) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(log + routes(
            fork_to(UAS2)
            + "  KSR.tm.t_on_branch('br')\n  KSR.tm.t_on_reply('rpl')\n"
            "  KSR.tm.t_on_failure('fl')\n  KSR.tm.t_on_branch_failure('bf')\n"
            "  KSR.tm.t_newtran()\n  note('request')\n"
            "  KSR.tm.t_relay()\n  note('relayed')\n",
            "function br() note('branch') end\n"
            "function rpl() note('reply') end\n"
            "function bf() note('branch_failure') end\n"
            "function fl() note('failure') end\n")))
        uac = SimUA(net, UAC)
        Callee(SimUA(net, UAS1), nursery, (0.1, 404))
        Callee(SimUA(net, UAS2), nursery, (0, 180), (0.2, 486))
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == 404  # 404 beats 486 (lower code in the plain 4xx)
        got = list(server.engine.lua.globals().LOG.values())
        assert got == [
            "request:0:-1", "branch:0:0", "branch:0:1", "relayed:0:-1",
            "reply:180:1",
            "reply:404:0", "branch_failure:404:0",
            "reply:486:1", "branch_failure:486:1",
            "failure:404:1",  # winning reply, branch of the last final
        ]
        nursery.cancel_scope.cancel()


async def test_branch_failure_route_on_a_timeout_sees_408(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=37) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_set_fr(0, 2000)\n"
            "  KSR.tm.t_on_branch_failure('bf')\n  KSR.tm.t_relay()\n",
            "function bf()\n"
            "  KSR.pv.seti('$shv(code)', KSR.pv.get('$T_reply_code'))\n"
            "  KSR.pv.seti('$shv(timeout)', KSR.tm.t_branch_timeout())\n"
            "end\n")))
        uac = SimUA(net, UAC)
        await Call(uac).send()
        final = await uac.expect_response(final=True)
        assert final.status == 408
        assert server.core.shv["code"] == 408
        assert server.core.shv["timeout"] == 1
        nursery.cancel_scope.cancel()


# -- ACKs -------------------------------------------------------------------------------------


async def test_e2e_ack_of_a_2xx_goes_through_the_script(autojump_clock) -> None:
    async with SimNetwork(seed=38) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=STATEFUL)
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        Callee(uas, nursery, (0, 180), (0.5, 200))
        call = Call(uac)
        await call.send()
        ok = await uac.expect_response(200)
        await call.ack_2xx(ok)
        ack = await uas.expect_request("ACK")
        assert isinstance(ack.msg, SipRequest)
        assert ack.msg.vias[0].host == "127.0.0.1"  # forwarded by the proxy
        assert ack.msg.ruri_text == f"sip:uas@{UAS1}"  # to the callee's Contact
        stats = server.core.tm.statistics()
        assert stats.get("ack_absorbed", 0) == 0
        assert server.core.stats["fwd_requests"] == 1  # the ACK, statelessly
        await settle(server)
        nursery.cancel_scope.cancel()


async def test_hop_by_hop_ack_is_absorbed(autojump_clock, write_routes) -> None:
    async with SimNetwork(seed=39) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_relay()\n")))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        Callee(uas, nursery, (0, 486))
        call = Call(uac)
        await call.send()
        busy = await uac.expect_response(486)
        await trio.sleep(0.75)
        await call.ack(busy)
        await trio.sleep(1)
        assert server.core.shv["runs"] == 1  # the ACK never reached the script
        assert server.core.tm.statistics()["ack_absorbed"] == 1
        assert uas.times(0, "ACK") == [0]  # the proxy's own ACK (hop by hop)
        assert len([r for r in uac.responses() if r.status == 486]) == 2  # 0 and 0.5 (G)
        nursery.cancel_scope.cancel()


# -- RFC 2543 ---------------------------------------------------------------------------------


async def test_rfc2543_request_retransmission_and_ack_matching(
        autojump_clock, write_routes) -> None:
    """No magic cookie: §17.2.3's RFC 2543 rules (Request-URI, tags, Call-ID, CSeq, top
    Via). The retransmission is absorbed, the ACK of the 486 too (its To tag is the
    486's), an ACK with another To tag is not (it is for a 2xx: to the script)."""
    async with SimNetwork(seed=40) as net, trio.open_nursery() as nursery:
        server = await start_server(nursery, net, routes=write_routes(routes(
            "  KSR.tm.t_relay()\n")))
        uac, uas = SimUA(net, UAC), SimUA(net, UAS1)
        Callee(uas, nursery, (0.25, 486))
        call = Call(uac, branch="")
        assert b"branch=" not in call.invite.split(b"\r\n")[1]
        await call.send()
        await trio.sleep(0.1)
        await call.send()  # a retransmission: the 100 again, no new run
        busy = await uac.expect_response(486)
        assert server.core.shv["runs"] == 1
        assert [r.status for r in uac.responses()] == [100, 100, 486]
        assert len(uas.times(0, "INVITE")) == 1
        await uac.send(call._make("ACK", to_tag="not-the-486-tag"), PROXY)
        await trio.sleep(0.1)
        assert server.core.shv["runs"] == 2  # not absorbed: routed (and relayed)
        await call.ack(busy)
        await trio.sleep(0.1)
        assert server.core.shv["runs"] == 2
        assert server.core.tm.statistics()["ack_absorbed"] == 1
        # a CANCEL matches the INVITE by the same rules; the INVITE is answered already
        await call.cancel()
        await uac.expect_response(200, method="CANCEL")
        await trio.sleep(40)
        assert set(finals(uac)) == {486}
        nursery.cancel_scope.cancel()
