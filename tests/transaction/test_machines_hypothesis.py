"""Property tests: every machine fed random valid and invalid inputs at random times.

Invariants checked after every step:

* a ProtocolError changes nothing (state and deadline as before);
* once a call returns, ``next_deadline()`` is after ``now`` (or ``inf`` once
  terminated): the owner never has to wait for a deadline in the past;
* ``Terminated`` is the last action of its list, comes once, and is final: later
  inputs raise, later timer calls return nothing;
* at most one ``TimedOut``; at most one final non-2xx passed up (client side);
* ``retransmissions`` counts exactly the ``Transmit(retransmission=True)`` returned;
* a client on a reliable transport never retransmits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from transaction_helpers import INVITE_SENT, OPTIONS_SENT, ack_for, request, response_to

from trio_sip.sip.reply import build_reply
from trio_sip.transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    PassUp,
    ProtocolError,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    TimedOut,
    TimerConfig,
    TransactionMachine,
    Transmit,
)

STATUSES = [100, 180, 183, 200, 202, 300, 302, 404, 408, 486, 487, 500, 503, 603]
INVITE_RESPONSES = {s: response_to(INVITE_SENT, s) for s in STATUSES}
OPTIONS_RESPONSES = {s: response_to(OPTIONS_SENT, s) for s in STATUSES}
INVITE = request(INVITE_SENT)
OPTIONS = request(OPTIONS_SENT)
INVITE_REPLIES = {s: build_reply(INVITE, s, to_tag="srv") for s in STATUSES}
OPTIONS_REPLIES = {s: build_reply(OPTIONS, s, to_tag="srv") for s in STATUSES}
ACK = ack_for(INVITE_SENT, "srv")

# mostly the RFC defaults: a zero timeout ends the story at once
overrides = st.sampled_from([None, None, None, 0.0, 3.0])
timer_configs = st.builds(
    lambda t1, k, **rest: TimerConfig(t1=t1, t2=t1 * k, **rest),
    t1=st.sampled_from([0.1, 0.5, 1.0]),
    k=st.sampled_from([1, 2, 8]),
    t4=st.sampled_from([0.0, 1.0, 5.0]),
    d=st.sampled_from([0.0, 5.0, 32.0]),
    b=overrides,
    f=overrides,
    h=overrides,
    j=overrides,
    l=overrides,
    m=overrides,
)
# mostly short steps (so several inputs land in one state), sometimes a long one
time_steps = st.one_of(
    st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 4.0, 16.0, 40.0]),
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
)
SETTINGS = settings(max_examples=300, stateful_step_count=40, deadline=None)


class MachineHarness(RuleBasedStateMachine):
    """Shared rules (time, timers) and invariant checks."""

    machine: TransactionMachine  # type: ignore[type-arg]
    client = False

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.seen_terminated = False
        self.timed_out = 0
        self.non_2xx_finals_up = 0
        self.retransmissions = 0

    def apply(self, call: Callable[[], list[Action]]) -> None:
        state = self.machine.state
        deadline = self.machine.next_deadline()
        try:
            actions = call()
        except ProtocolError:
            assert self.machine.state is state
            assert self.machine.next_deadline() == deadline
            return
        self.check(actions)

    def check(self, actions: list[Action]) -> None:
        if self.seen_terminated:
            assert actions == [], actions
        for i, action in enumerate(actions):
            if isinstance(action, Transmit):
                self.retransmissions += action.retransmission
            elif isinstance(action, TimedOut):
                self.timed_out += 1
                assert action.timer in "BFH"
            elif isinstance(action, PassUp):
                status = getattr(action.message, "status", 0)
                if status >= 300:
                    self.non_2xx_finals_up += 1
            elif isinstance(action, Terminated):
                assert i == len(actions) - 1, actions
                self.seen_terminated = True
        assert self.machine.terminated == self.seen_terminated
        if self.seen_terminated:
            assert self.machine.next_deadline() == math.inf
            assert self.machine.handle_timer(self.now) == []
        else:
            assert self.machine.next_deadline() > self.now
        assert self.timed_out <= 1
        assert self.non_2xx_finals_up <= 1
        assert self.machine.retransmissions == self.retransmissions
        if self.client and self.machine.reliable:
            assert self.retransmissions == 0

    @rule(dt=time_steps)
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.apply(lambda: self.machine.handle_timer(self.now))

    @rule(dt=time_steps)
    def owner_is_late(self, dt: float) -> None:
        # time passes and the owner does not wake the machine: the next input comes
        # in after a deadline, and must fire it itself
        self.now += dt

    @rule()
    def wake_at_deadline(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline != math.inf:
            self.now = max(self.now, deadline)
        self.apply(lambda: self.machine.handle_timer(self.now))

    @rule(timers=timer_configs)
    def change_timers(self, timers: TimerConfig) -> None:
        self.apply(lambda: self.machine.set_timers(timers, self.now))

    @rule()
    def transport_error(self) -> None:
        self.apply(lambda: self.machine.transport_error(self.now))  # type: ignore[attr-defined]


class ICTMachine(MachineHarness):
    client = True

    @initialize(reliable=st.booleans(), timers=timer_configs)
    def create(self, reliable: bool, timers: TimerConfig) -> None:
        self.ict = ClientInviteTransaction(INVITE, INVITE_SENT, reliable, timers, 0.0)
        self.machine = self.ict

    @rule()
    def start(self) -> None:
        self.apply(lambda: self.ict.start(self.now))

    @rule(status=st.sampled_from(STATUSES))
    def response(self, status: int) -> None:
        self.apply(lambda: self.ict.receive_response(INVITE_RESPONSES[status], self.now))
        if self.ict.ack is not None:
            assert self.ict.final_response is not None


class NICTMachine(MachineHarness):
    client = True

    @initialize(reliable=st.booleans(), timers=timer_configs)
    def create(self, reliable: bool, timers: TimerConfig) -> None:
        self.nict = ClientNonInviteTransaction(OPTIONS, OPTIONS_SENT, reliable, timers, 0.0)
        self.machine = self.nict

    @rule()
    def start(self) -> None:
        self.apply(lambda: self.nict.start(self.now))

    @rule(status=st.sampled_from(STATUSES))
    def response(self, status: int) -> None:
        finals_before = self.non_2xx_finals_up
        self.apply(lambda: self.nict.receive_response(OPTIONS_RESPONSES[status], self.now))
        assert self.non_2xx_finals_up - finals_before <= 1


class ISTMachine(MachineHarness):
    @initialize(reliable=st.booleans(), timers=timer_configs)
    def create(self, reliable: bool, timers: TimerConfig) -> None:
        self.ist = ServerInviteTransaction(INVITE, reliable, timers, 0.0)
        self.machine = self.ist

    @rule(status=st.sampled_from(STATUSES))
    def send(self, status: int) -> None:
        self.apply(lambda: self.ist.send_response(INVITE_REPLIES[status], status, self.now))

    @rule()
    def invite_again(self) -> None:
        self.apply(lambda: self.ist.receive_request(self.now))

    @rule()
    def ack(self) -> None:
        self.apply(lambda: self.ist.receive_ack(ACK, self.now))


class NISTMachine(MachineHarness):
    @initialize(reliable=st.booleans(), timers=timer_configs)
    def create(self, reliable: bool, timers: TimerConfig) -> None:
        self.nist = ServerNonInviteTransaction(OPTIONS, reliable, timers, 0.0)
        self.machine = self.nist

    @rule(status=st.sampled_from(STATUSES))
    def send(self, status: int) -> None:
        self.apply(lambda: self.nist.send_response(OPTIONS_REPLIES[status], status, self.now))

    @rule()
    def request_again(self) -> None:
        self.apply(lambda: self.nist.receive_request(self.now))


TestICT = ICTMachine.TestCase
TestNICT = NICTMachine.TestCase
TestIST = ISTMachine.TestCase
TestNIST = NISTMachine.TestCase
for _case in (TestICT, TestNICT, TestIST, TestNIST):
    _case.settings = SETTINGS
del _case
