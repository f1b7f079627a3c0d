"""TimerConfig: RFC 3261 Table 4 defaults, RFC 6026 L and M, overrides."""

from __future__ import annotations

import pytest

from trio_sip.transaction import TimerConfig


def test_rfc_defaults() -> None:
    t = TimerConfig()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    for name in "BFHJLM":
        assert t.duration(name, reliable=False) == 32.0
    assert t.duration("D", reliable=False) == 32.0
    assert t.duration("I", reliable=False) == 5.0
    assert t.duration("K", reliable=False) == 5.0
    # zero on reliable transports: D, I, J, K; the others do not change
    for name in "DIJK":
        assert t.duration(name, reliable=True) == 0.0
    for name in "BFHLM":
        assert t.duration(name, reliable=True) == 32.0


def test_defaults_follow_t1() -> None:
    t = TimerConfig(t1=0.1)
    assert (t.timer_b, t.timer_f, t.timer_h, t.timer_j, t.timer_l, t.timer_m) == (
        pytest.approx(6.4),) * 6
    assert t.timer_d == 32.0  # D is "at least 32 s", not derived from T1


def test_overrides_and_with() -> None:
    base = TimerConfig()
    t = base.with_(t1=0.25, b=10.0, j=5.0)
    assert base.t1 == 0.5  # a copy
    assert t.timer_b == 10.0
    assert t.timer_f == 16.0
    assert t.duration("J", reliable=False) == 5.0
    assert t.duration("J", reliable=True) == 0.0
    assert t == TimerConfig(t1=0.25, b=10.0, j=5.0)


def test_validation() -> None:
    with pytest.raises(ValueError, match="T1"):
        TimerConfig(t1=0)
    with pytest.raises(ValueError, match="T2"):
        TimerConfig(t1=1.0, t2=0.5)
    with pytest.raises(ValueError, match="timer b"):
        TimerConfig(b=-1.0)
    with pytest.raises(ValueError):
        TimerConfig().with_(t4=float("nan"))
    with pytest.raises(TypeError):
        TimerConfig().with_(x=1.0)
    with pytest.raises(ValueError, match="not a timeout timer"):
        TimerConfig().duration("A", reliable=False)
