"""Non-INVITE server transaction (RFC 3261 §17.2.2)."""

from __future__ import annotations

import math

import pytest
from transaction_helpers import INVITE_SENT, OPTIONS_SENT, Terminated, Transmit, request

from trio_sip.sip.reply import build_reply
from trio_sip.transaction import (
    LocalProtocolError,
    NISTState,
    ProtocolError,
    ServerNonInviteTransaction,
    TimerConfig,
    TransportFailed,
)

T = TimerConfig()
OPTIONS = request(OPTIONS_SENT)
R100 = build_reply(OPTIONS, 100)
R200 = build_reply(OPTIONS, 200, to_tag="srv")
R404 = build_reply(OPTIONS, 404, to_tag="srv")


def nist(*, reliable: bool = False, timers: TimerConfig = T) -> ServerNonInviteTransaction:
    t = ServerNonInviteTransaction(OPTIONS, reliable, timers, 0.0)
    assert t.state is NISTState.TRYING
    return t


def test_trying_absorbs_retransmissions() -> None:
    t = nist()
    assert t.receive_request(0.5) == []
    assert t.next_deadline() == math.inf


def test_proceeding_resends_last_provisional() -> None:
    t = nist()
    assert t.send_response(R100, 100, 0.1) == [Transmit(R100, False)]
    assert t.state is NISTState.PROCEEDING
    assert t.receive_request(0.5) == [Transmit(R100, True)]
    assert t.retransmissions == 1


def test_final_then_timer_j_udp() -> None:
    t = nist()
    t.send_response(R100, 100, 0.1)
    assert t.send_response(R200, 200, 1.0) == [Transmit(R200, False)]
    assert t.state is NISTState.COMPLETED
    assert t.next_deadline() == 33.0  # Timer J = 64*T1
    assert t.receive_request(2.0) == [Transmit(R200, True)]
    assert t.receive_request(3.0) == [Transmit(R200, True)]
    assert t.handle_timer(32.0) == []
    assert t.handle_timer(33.0) == [Terminated()]
    assert t.retransmissions == 2


def test_final_over_tcp_terminates_at_once() -> None:
    t = nist(reliable=True)
    assert t.send_response(R404, 404, 1.0) == [Transmit(R404, False), Terminated()]


def test_timer_j_override() -> None:
    t = nist(timers=T.with_(j=5.0))  # Kamailio's wt
    t.send_response(R200, 200, 1.0)
    assert t.next_deadline() == 6.0
    t = nist(timers=TimerConfig(t1=0.1))
    t.send_response(R200, 200, 1.0)
    assert t.next_deadline() == pytest.approx(7.4)


def test_second_final_is_refused() -> None:
    t = nist()
    t.send_response(R404, 404, 0.0)
    with pytest.raises(LocalProtocolError):
        t.send_response(R200, 200, 0.1)
    with pytest.raises(LocalProtocolError):
        t.send_response(R100, 100, 0.1)
    assert t.last_response == R404 and t.last_status == 404


def test_transport_error() -> None:
    t = nist()
    with pytest.raises(LocalProtocolError):
        t.transport_error(0.0)  # nothing sent in Trying
    t.send_response(R100, 100, 0.1)
    assert t.transport_error(0.2) == [TransportFailed(), Terminated()]
    t = nist()
    t.send_response(R200, 200, 0.1)
    assert t.transport_error(0.2) == [TransportFailed(), Terminated()]


def test_terminated_is_final() -> None:
    t = nist(reliable=True)
    t.send_response(R200, 200, 0.0)
    with pytest.raises(ProtocolError):
        t.receive_request(1.0)
    with pytest.raises(ProtocolError):
        t.send_response(R200, 200, 1.0)


def test_refuses_invite() -> None:
    with pytest.raises(ValueError):
        ServerNonInviteTransaction(request(INVITE_SENT), False, T, 0.0)
