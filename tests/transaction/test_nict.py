"""Non-INVITE client transaction: exact schedules (RFC 3261 §17.1.2)."""

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
    request,
    response_to,
    run_timers,
    times_of,
)

from trio_sip.transaction import (
    ClientNonInviteTransaction,
    LocalProtocolError,
    NICTState,
    ProtocolError,
    TimerConfig,
    TransportFailed,
)

T = TimerConfig()


def nict(*, reliable: bool = False, timers: TimerConfig = T, now: float = 0.0
         ) -> ClientNonInviteTransaction:
    t = ClientNonInviteTransaction(request(OPTIONS_SENT), OPTIONS_SENT, reliable, timers, now)
    assert t.state is NICTState.IDLE
    assert t.start(now) == [Transmit(OPTIONS_SENT, False)]
    assert t.state is NICTState.TRYING
    return t


def test_udp_no_answer_e_doubles_to_t2_and_f_times_out() -> None:
    t = nict()
    events = run_timers(t)
    sent = times_of(events, Transmit)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    gaps = [b - a for a, b in zip([0.0, *sent], sent, strict=False)]
    assert gaps == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]  # capped at T2
    assert [a for _, a in events if not isinstance(a, Transmit)] == [TimedOut("F"), Terminated()]
    assert times_of(events, TimedOut) == [32.0]
    assert t.retransmissions == 10


def test_tcp_no_retransmissions() -> None:
    t = nict(reliable=True)
    events = run_timers(t)
    assert events == [(32.0, TimedOut("F")), (32.0, Terminated())]
    assert t.retransmissions == 0


def test_after_a_provisional_retransmits_every_t2_and_f_still_runs() -> None:
    t = nict()
    t.handle_timer(0.5)  # next E at 1.5 (interval 1)
    trying = response_to(OPTIONS_SENT, 100, to_tag=None)
    assert t.receive_response(trying, 0.7) == [PassUp(trying)]
    assert t.state is NICTState.PROCEEDING
    assert t.next_deadline() == 1.5  # the armed E fires as scheduled ...
    events = run_timers(t)
    # ... then every T2 (§17.1.2.2), and Timer F (64*T1 from the start) still ends it
    assert times_of(events, Transmit) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert times_of(events, TimedOut) == [32.0]


def test_final_response_then_timer_k() -> None:
    t = nict()
    ok = response_to(OPTIONS_SENT, 200)
    assert t.receive_response(ok, 1.0) == [PassUp(ok)]
    assert t.state is NICTState.COMPLETED
    assert t.final_response is ok
    assert t.next_deadline() == 1.0 + 5.0  # Timer K = T4
    # retransmissions (and late provisionals) are absorbed
    assert t.receive_response(ok, 2.0) == []
    assert t.receive_response(response_to(OPTIONS_SENT, 180), 2.5) == []
    assert t.receive_response(response_to(OPTIONS_SENT, 404), 3.0) == []
    assert t.handle_timer(6.0) == [Terminated()]


def test_final_response_over_tcp_timer_k_is_zero() -> None:
    t = nict(reliable=True)
    nf = response_to(OPTIONS_SENT, 404)
    assert t.receive_response(nf, 1.0) == [PassUp(nf), Terminated()]


def test_timer_k_follows_t4_and_overrides() -> None:
    t = nict(timers=TimerConfig(t4=2.5))
    t.receive_response(response_to(OPTIONS_SENT, 200), 1.0)
    assert t.next_deadline() == 3.5
    t = nict(timers=TimerConfig(t1=0.1, t2=0.4))
    events = run_timers(t)
    assert times_of(events, Transmit) == pytest.approx(
        [0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3])
    assert times_of(events, TimedOut) == pytest.approx([6.4])
    t = nict(timers=TimerConfig(f=3.0))
    assert times_of(run_timers(t), TimedOut) == [3.0]


def test_tie_between_e_and_f_timeout_wins() -> None:
    # with T2 == T1 every E lands on a multiple of T1, one of them on 64*T1
    t = nict(timers=TimerConfig(t1=0.5, t2=0.5))
    events = run_timers(t)
    assert times_of(events, Transmit)[-1] == 31.5
    assert [a for tm, a in events if tm == 32.0] == [TimedOut("F"), Terminated()]


def test_transport_error() -> None:
    t = nict()
    assert t.transport_error(0.0) == [TransportFailed(), Terminated()]
    t = nict()
    t.receive_response(response_to(OPTIONS_SENT, 180), 0.1)
    assert t.transport_error(0.2) == [TransportFailed(), Terminated()]
    t = nict()
    t.receive_response(response_to(OPTIONS_SENT, 200), 0.1)
    with pytest.raises(LocalProtocolError):
        t.transport_error(0.2)  # nothing is sent in Completed
    assert t.state is NICTState.COMPLETED


def test_terminated_is_final() -> None:
    t = nict(reliable=True)
    t.handle_timer(32.0)
    with pytest.raises(ProtocolError):
        t.receive_response(response_to(OPTIONS_SENT, 200), 33.0)
    with pytest.raises(ProtocolError):
        t.start(33.0)
    assert t.handle_timer(100.0) == []
    assert t.next_deadline() == math.inf


def test_refuses_invite_and_ack() -> None:
    with pytest.raises(ValueError):
        ClientNonInviteTransaction(request(INVITE_SENT), INVITE_SENT, False, T, 0.0)
