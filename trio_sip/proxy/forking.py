"""Choosing the response to send upstream when a request was forked (RFC 3261 §16.7).

Kamailio's rules (``tm/t_reply.c``), which trio-sip follows:

* a 2xx is forwarded at once and is not "picked" (§16.7 step 5);
* when every branch has a final response, the lowest *priority* wins:
  6xx (1000+xx) before 3xx (3000+xx) before 4xx (4000+..) before 5xx (5000+xx);
  inside 4xx, 401, 407, 415, 420 and 484 come first (4000+xx), other 4xx after
  (4100+xx); codes >= 700 last (10000+code);
* a reply the server made up itself (a 408 on timeout) is penalised by
  ``faked_reply_prio`` so a real reply of the same class wins;
* for a 401/407 winner the challenges of every 401/407 branch are merged into
  it (§16.7 step 7), so the caller can answer all of them at once;
* 503 is sent upstream as 500 (§16.7 step 6; Kamailio ``remap_503_500``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

_CLASS_PRIO: Final = (32000, 11000, 0, 3000, 4000, 5000, 1000)
_PREFERRED_4XX: Final = frozenset({1, 7, 15, 20, 84})


def response_priority(code: int, *, faked: bool = False, faked_reply_prio: int = 0) -> int:
    """Lower is better. ``faked`` marks a reply generated locally (timeouts)."""
    cls = code // 100
    if cls < 7:
        xx = code % 100
        if cls == 4:
            prio = _CLASS_PRIO[4] + (xx if xx in _PREFERRED_4XX else 100 + xx)
        else:
            prio = _CLASS_PRIO[cls] + xx
    else:
        prio = 10000 + code
    return prio + (faked_reply_prio if faked else 0)


def pick_best(codes: Sequence[tuple[int, bool]], *, faked_reply_prio: int = 0) -> int | None:
    """Index of the best final response among ``(code, faked)`` pairs (final codes only
    count; None if there is none). Ties go to the earliest branch."""
    best: int | None = None
    best_prio = 0
    for i, (code, faked) in enumerate(codes):
        if code < 200:
            continue
        prio = response_priority(code, faked=faked, faked_reply_prio=faked_reply_prio)
        if best is None or prio < best_prio:
            best, best_prio = i, prio
    return best


def upstream_status(code: int, *, remap_503_500: bool = True) -> int:
    """§16.7 step 6: a proxy should not forward a 503 upstream; it sends 500 instead."""
    return 500 if remap_503_500 and code == 503 else code


def challenge_header_name(code: int) -> str | None:
    return {401: "www-authenticate", 407: "proxy-authenticate"}.get(code)
