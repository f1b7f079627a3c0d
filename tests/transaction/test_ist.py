"""INVITE server transaction: exact schedules (RFC 3261 §17.2.1, RFC 6026 §7.1)."""

from __future__ import annotations

import math

import pytest
from transaction_helpers import (
    INVITE_SENT,
    OPTIONS_SENT,
    PassUp,
    Terminated,
    TimedOut,
    Transmit,
    ack_for,
    request,
    run_timers,
    times_of,
)

from trio_sip.sip.reply import build_reply
from trio_sip.transaction import (
    ISTState,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ServerInviteTransaction,
    TimerConfig,
    TransportFailed,
)

T = TimerConfig()
INVITE = request(INVITE_SENT)
R100 = build_reply(INVITE, 100)
R180 = build_reply(INVITE, 180, to_tag="srv")
R200 = build_reply(INVITE, 200, to_tag="srv")
R486 = build_reply(INVITE, 486, to_tag="srv")


def ist(*, reliable: bool = False, timers: TimerConfig = T, now: float = 0.0
        ) -> ServerInviteTransaction:
    t = ServerInviteTransaction(INVITE, reliable, timers, now)
    assert t.state is ISTState.PROCEEDING
    assert t.next_deadline() == math.inf
    return t


def test_provisionals_and_retransmitted_invite() -> None:
    t = ist()
    # a retransmitted INVITE before any response: absorbed
    assert t.receive_request(0.1) == []
    assert t.send_response(R100, 100, 0.2) == [Transmit(R100, False)]
    assert t.receive_request(0.3) == [Transmit(R100, True)]
    assert t.send_response(R180, 180, 0.4) == [Transmit(R180, False)]
    assert t.receive_request(0.5) == [Transmit(R180, True)]  # the most recent one
    assert t.state is ISTState.PROCEEDING
    assert t.next_deadline() == math.inf
    assert t.retransmissions == 2


def test_non_2xx_over_udp_timer_g_and_h() -> None:
    t = ist()
    assert t.send_response(R486, 486, 0.0) == [Transmit(R486, False)]
    assert t.state is ISTState.COMPLETED
    events = run_timers(t)
    # Timer G: T1, doubling, capped at T2
    assert times_of(events, Transmit) == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(a == Transmit(R486, True) for _, a in events if isinstance(a, Transmit))
    assert [(tm, a) for tm, a in events if not isinstance(a, Transmit)] == [
        (32.0, TimedOut("H")), (32.0, Terminated())]
    assert t.retransmissions == 10


def test_non_2xx_over_tcp_no_g_only_h() -> None:
    t = ist(reliable=True)
    t.send_response(R486, 486, 1.0)
    assert run_timers(t) == [(33.0, TimedOut("H")), (33.0, Terminated())]
    assert t.retransmissions == 0


def test_retransmitted_invite_in_completed_resends_final() -> None:
    t = ist()
    t.send_response(R180, 180, 0.0)
    t.send_response(R486, 486, 1.0)
    assert t.receive_request(1.2) == [Transmit(R486, True)]
    assert t.next_deadline() == 1.5  # G keeps its schedule


def test_ack_moves_to_confirmed_then_timer_i() -> None:
    t = ist()
    t.send_response(R486, 486, 0.0)
    t.handle_timer(0.5)
    assert t.receive_ack(ack_for(INVITE_SENT, "srv"), 1.0) == []
    assert t.state is ISTState.CONFIRMED
    assert t.next_deadline() == 6.0  # Timer I = T4; G and H stopped
    # ACK and INVITE retransmissions are absorbed
    assert t.receive_ack(ack_for(INVITE_SENT, "srv"), 2.0) == []
    assert t.receive_request(3.0) == []
    assert t.handle_timer(6.0) == [Terminated()]


def test_ack_over_tcp_timer_i_is_zero() -> None:
    t = ist(reliable=True)
    t.send_response(R486, 486, 0.0)
    assert t.receive_ack(ack_for(INVITE_SENT, "srv"), 1.0) == [Terminated()]


def test_2xx_accepted_timer_l_and_ack_to_tu() -> None:
    t = ist()
    assert t.send_response(R200, 200, 2.0) == [Transmit(R200, False)]
    assert t.state is ISTState.ACCEPTED
    assert t.next_deadline() == 34.0  # Timer L = 64*T1
    # the machine never retransmits a 2xx; the TU does, through send_response
    assert t.handle_timer(2.2) == []
    assert t.send_response(R200, 200, 2.5) == [Transmit(R200, True)]
    other = build_reply(INVITE, 200, to_tag="fork2")
    assert t.send_response(other, 200, 3.0) == [Transmit(other, False)]
    # a retransmitted INVITE is absorbed (RFC 6026 §7.1)
    assert t.receive_request(3.5) == []
    ack = ack_for(INVITE_SENT, "srv")
    assert t.receive_ack(ack, 4.0) == [PassUp(ack)]
    assert t.receive_ack(ack, 4.5) == [PassUp(ack)]
    assert t.handle_timer(34.0) == [Terminated()]
    assert t.retransmissions == 1


def test_timer_l_on_tcp_and_override() -> None:
    t = ist(reliable=True, timers=T.with_(l=8.0))
    t.send_response(R200, 200, 1.0)
    assert run_timers(t) == [(9.0, Terminated())]


def test_overrides_g_and_h() -> None:
    t = ist(timers=TimerConfig(t1=0.1, t2=0.2, h=1.0))
    t.send_response(R486, 486, 0.0)
    events = run_timers(t)
    assert times_of(events, Transmit) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert times_of(events, TimedOut) == [1.0]


def test_transport_errors_inform_tu_and_stay() -> None:
    t = ist()
    assert t.transport_error(0.0) == [TransportFailed()]
    assert t.state is ISTState.PROCEEDING
    t.send_response(R486, 486, 0.1)
    assert t.transport_error(0.2) == [TransportFailed()]
    assert t.state is ISTState.COMPLETED
    assert t.next_deadline() == 0.6
    t = ist()
    t.send_response(R200, 200, 0.1)
    assert t.transport_error(0.2) == [TransportFailed()]
    assert t.state is ISTState.ACCEPTED


def test_impossible_inputs() -> None:
    t = ist()
    with pytest.raises(RemoteProtocolError):
        t.receive_ack(ack_for(INVITE_SENT), 0.0)  # no final response yet
    t.send_response(R486, 486, 0.0)
    for status, data in ((180, R180), (200, R200), (486, R486)):
        with pytest.raises(LocalProtocolError):
            t.send_response(data, status, 0.1)  # nothing after a final
    assert t.state is ISTState.COMPLETED
    assert t.last_response == R486
    t2 = ist()
    t2.send_response(R200, 200, 0.0)
    with pytest.raises(LocalProtocolError):
        t2.send_response(R486, 486, 0.1)
    with pytest.raises(LocalProtocolError):
        t2.send_response(R180, 180, 0.1)
    t.receive_ack(ack_for(INVITE_SENT, "srv"), 0.2)
    with pytest.raises(LocalProtocolError):
        t.transport_error(0.3)  # nothing is sent in Confirmed
    t.handle_timer(5.2)
    assert t.state is ISTState.TERMINATED
    with pytest.raises(ProtocolError):
        t.receive_request(6.0)
    with pytest.raises(ValueError):
        t.send_response(R200, 700, 6.0)


def test_refuses_other_methods() -> None:
    with pytest.raises(ValueError):
        ServerInviteTransaction(request(OPTIONS_SENT), False, T, 0.0)
