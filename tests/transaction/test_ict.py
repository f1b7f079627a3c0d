"""INVITE client transaction: exact schedules with explicit ``now`` (RFC 3261 §17.1.1,
RFC 6026 §7.2)."""

from __future__ import annotations

import math

import pytest
from transaction_helpers import (
    INVITE_SENT,
    PassUp,
    Terminated,
    TimedOut,
    Transmit,
    request,
    response_to,
    run_timers,
    times_of,
)

from trio_sip.sip.message import SipRequest
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.transaction import (
    ClientInviteTransaction,
    ICTState,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TimerConfig,
    TransportFailed,
)

T = TimerConfig()


def ict(*, reliable: bool = False, timers: TimerConfig = T, now: float = 0.0
        ) -> ClientInviteTransaction:
    return ClientInviteTransaction(request(INVITE_SENT), INVITE_SENT, reliable, timers, now)


def started(**kw: object) -> ClientInviteTransaction:
    t = ict(**kw)  # type: ignore[arg-type]
    t.start(t.created_at)
    return t


def test_udp_no_answer_retransmits_on_timer_a_and_times_out_on_timer_b() -> None:
    t = ict()
    assert t.state is ICTState.IDLE
    assert t.next_deadline() == math.inf
    first = t.start(0.0)
    assert first == [Transmit(INVITE_SENT, retransmission=False)]
    assert t.state is ICTState.CALLING
    events = run_timers(t)
    # Timer A doubles without a T2 cap (§17.1.1.2)
    assert times_of(events, Transmit) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(a == Transmit(INVITE_SENT, True) for _, a in events if isinstance(a, Transmit))
    assert [(tm, a) for tm, a in events if not isinstance(a, Transmit)] == [
        (32.0, TimedOut("B")), (32.0, Terminated())]
    assert t.state is ICTState.TERMINATED
    assert t.retransmissions == 6
    assert t.next_deadline() == math.inf


def test_start_time_offsets_every_deadline() -> None:
    t = started(now=100.0)
    assert t.next_deadline() == 100.5
    events = run_timers(t)
    assert times_of(events, Transmit) == [100.5, 101.5, 103.5, 107.5, 115.5, 131.5]
    assert times_of(events, TimedOut) == [132.0]


def test_tcp_no_answer_sends_once_and_times_out_at_64_t1() -> None:
    t = ict(reliable=True)
    assert t.start(0.0) == [Transmit(INVITE_SENT, False)]
    assert t.next_deadline() == 32.0
    assert t.handle_timer(32.0) == [TimedOut("B"), Terminated()]
    assert t.retransmissions == 0


def test_timer_overrides() -> None:
    t = started(timers=TimerConfig(t1=0.1))
    events = run_timers(t)
    assert times_of(events, Transmit) == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert times_of(events, TimedOut) == pytest.approx([6.4])
    t = started(timers=TimerConfig().with_(b=10.0))
    events = run_timers(t)
    assert times_of(events, Transmit) == [0.5, 1.5, 3.5, 7.5]
    assert times_of(events, TimedOut) == [10.0]


def test_handle_timer_early_does_nothing() -> None:
    t = started()
    assert t.handle_timer(0.25) == []
    assert t.next_deadline() == 0.5


def test_late_wakeup_sends_one_copy_and_keeps_the_schedule() -> None:
    t = started()
    actions = t.handle_timer(5.0)  # A was due at 0.5, 1.5 and 3.5
    assert actions == [Transmit(INVITE_SENT, True)]
    assert t.next_deadline() == 7.5
    assert t.retransmissions == 1


def test_provisional_stops_retransmissions_and_timer_b() -> None:
    t = started()
    t.handle_timer(0.5)
    ringing = response_to(INVITE_SENT, 180)
    assert t.receive_response(ringing, 0.7) == [PassUp(ringing)]
    assert t.state is ICTState.PROCEEDING
    assert t.cancel_allowed
    # nothing times out an INVITE in Proceeding: Timer C / fr_inv belong to the TU
    assert t.next_deadline() == math.inf
    again = response_to(INVITE_SENT, 183)
    assert t.receive_response(again, 100.0) == [PassUp(again)]


def test_cancel_allowed_only_in_proceeding() -> None:
    t = ict()
    assert not t.cancel_allowed
    t.start(0.0)
    assert not t.cancel_allowed  # §9.1: not before a provisional
    t.receive_response(response_to(INVITE_SENT, 100, to_tag=None), 0.1)
    assert t.cancel_allowed
    t.receive_response(response_to(INVITE_SENT, 487), 0.2)
    assert not t.cancel_allowed


def test_2xx_moves_to_accepted_and_every_2xx_is_passed_up_until_timer_m() -> None:
    t = started()
    ok = response_to(INVITE_SENT, 200)
    assert t.receive_response(ok, 2.0) == [PassUp(ok)]
    assert t.state is ICTState.ACCEPTED
    assert t.next_deadline() == 2.0 + 32.0  # Timer M = 64*T1
    fork = response_to(INVITE_SENT, 200, to_tag="other-fork")
    assert t.receive_response(fork, 3.0) == [PassUp(fork)]
    assert t.receive_response(ok, 4.0) == [PassUp(ok)]
    # a late provisional (reordered) is absorbed
    assert t.receive_response(response_to(INVITE_SENT, 180), 5.0) == []
    assert t.handle_timer(34.0) == [Terminated()]
    # the owner never serviced Timer A before the 2xx: the input goes first and
    # stops A, so no late copy of the INVITE is sent
    assert t.retransmissions == 0


def test_2xx_in_accepted_over_tcp_timer_m_also_applies() -> None:
    t = started(reliable=True)
    ok = response_to(INVITE_SENT, 200)
    t.receive_response(ok, 1.0)
    assert t.next_deadline() == 33.0
    assert t.handle_timer(33.0) == [Terminated()]


def test_non_2xx_final_builds_acks_and_passes_up_once() -> None:
    t = started()
    t.handle_timer(0.5)
    busy = response_to(INVITE_SENT, 486)
    actions = t.receive_response(busy, 1.0)
    assert t.state is ICTState.COMPLETED
    assert t.ack is not None
    assert actions == [Transmit(t.ack, False), PassUp(busy)]
    assert t.final_response is busy
    assert t.next_deadline() == 33.0  # Timer D = 32 s on UDP
    # a retransmitted final: the ACK again, nothing to the TU (§17.1.1.2)
    assert t.receive_response(busy, 2.0) == [Transmit(t.ack, True)]
    assert t.receive_response(response_to(INVITE_SENT, 486), 3.0) == [Transmit(t.ack, True)]
    assert t.retransmissions == 3  # the INVITE at 0.5 and two ACKs
    # a late provisional is absorbed
    assert t.receive_response(response_to(INVITE_SENT, 180), 4.0) == []
    assert t.handle_timer(32.9) == []
    assert t.handle_timer(33.0) == [Terminated()]


def test_non_2xx_over_tcp_terminates_at_once_timer_d_is_zero() -> None:
    t = started(reliable=True)
    nf = response_to(INVITE_SENT, 404)
    actions = t.receive_response(nf, 1.0)
    assert t.ack is not None
    assert actions == [Transmit(t.ack, False), PassUp(nf), Terminated()]
    assert t.state is ICTState.TERMINATED


def test_timer_d_override() -> None:
    t = started(timers=TimerConfig(d=5.0))
    t.receive_response(response_to(INVITE_SENT, 603), 1.0)
    assert t.next_deadline() == 6.0


def test_2xx_after_487_is_passed_up_without_state_change() -> None:
    # the CANCEL/200 race: a downstream proxy forwards the 200 after its 487 (§16.7 step 5)
    t = started()
    t.receive_response(response_to(INVITE_SENT, 487), 1.0)
    ok = response_to(INVITE_SENT, 200, to_tag="late")
    assert t.receive_response(ok, 1.5) == [PassUp(ok)]
    assert t.state is ICTState.COMPLETED


def test_non_2xx_after_2xx_is_a_remote_protocol_error() -> None:
    t = started()
    t.receive_response(response_to(INVITE_SENT, 200), 1.0)
    with pytest.raises(RemoteProtocolError) as exc:
        t.receive_response(response_to(INVITE_SENT, 486), 2.0)
    assert exc.value.state == "ACCEPTED"
    assert exc.value.event == "RECV_300_699"
    assert t.state is ICTState.ACCEPTED
    assert t.next_deadline() == 33.0


def test_transport_error_in_calling_and_completed() -> None:
    t = started()
    assert t.transport_error(0.1) == [TransportFailed(), Terminated()]
    assert t.state is ICTState.TERMINATED
    t = started()
    t.receive_response(response_to(INVITE_SENT, 500), 1.0)
    assert t.transport_error(1.0) == [TransportFailed(), Terminated()]


def test_transport_error_where_nothing_was_sent_is_a_local_error() -> None:
    t = started()
    t.receive_response(response_to(INVITE_SENT, 180), 1.0)
    with pytest.raises(LocalProtocolError):
        t.transport_error(1.0)
    with pytest.raises(LocalProtocolError):
        ict().transport_error(0.0)


def test_impossible_inputs() -> None:
    t = ict()
    with pytest.raises(RemoteProtocolError):
        t.receive_response(response_to(INVITE_SENT, 180), 0.0)  # nothing sent yet
    t.start(0.0)
    with pytest.raises(LocalProtocolError):
        t.start(0.0)
    t.handle_timer(32.0)
    assert t.state is ICTState.TERMINATED
    with pytest.raises(ProtocolError):
        t.receive_response(response_to(INVITE_SENT, 200), 33.0)
    assert t.handle_timer(40.0) == []
    with pytest.raises(LocalProtocolError):
        t.handle_timer(39.0)  # time went backwards


def test_input_then_overdue_timer() -> None:
    # the owner feeds a response it received after Timer B's deadline, before waking
    t = started(reliable=True)
    late = response_to(INVITE_SENT, 180)
    assert t.receive_response(late, 40.0) == [PassUp(late)]  # B only runs in Calling
    t = started(reliable=True)
    t.receive_response(response_to(INVITE_SENT, 200), 1.0)
    ok = response_to(INVITE_SENT, 200)
    assert t.receive_response(ok, 50.0) == [PassUp(ok), Terminated()]  # then M fires


def test_set_timers_moves_an_armed_timeout() -> None:
    t = started(reliable=True)
    assert t.next_deadline() == 32.0
    assert t.set_timers(T.with_(b=10.0), 5.0) == []
    assert t.next_deadline() == 10.0
    # shortened below the time already spent: it fires in the same call
    t2 = started(reliable=True)
    assert t2.set_timers(T.with_(b=1.0), 5.0) == [TimedOut("B"), Terminated()]


def test_set_timers_retransmission_takes_effect_after_current_interval() -> None:
    # Kamailio t_set_retr: the armed deadline stays, the next ones follow the new T2.
    t = started(timers=TimerConfig())
    t.handle_timer(0.5)  # next at 1.5
    t.set_timers(TimerConfig(t1=0.5, t2=0.5, b=100.0), 1.0)
    assert t.next_deadline() == 1.5
    # Timer A has no T2 cap, so it keeps doubling
    assert times_of(run_timers(t, until=20.0), Transmit) == [1.5, 3.5, 7.5, 15.5]


def test_ack_is_built_from_the_sent_bytes_and_the_response_to_tag() -> None:
    t = started()
    t.receive_response(response_to(INVITE_SENT, 487), 1.0)
    assert t.ack is not None
    ack = parse_message_untrusted(t.ack)
    assert isinstance(ack, SipRequest)
    assert ack.method == "ACK"
    assert ack.to_tag == "8321234356"
    assert [v.branch for v in ack.vias] == ["z9hG4bKproxy1"]


def test_constructor_refuses_other_methods() -> None:
    opts = request(INVITE_SENT.replace(b"INVITE", b"OPTIONS"))
    with pytest.raises(ValueError):
        ClientInviteTransaction(opts, INVITE_SENT, False, T, 0.0)
