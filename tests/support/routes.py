"""Routes for tests: the request route most transaction tests start from."""

from __future__ import annotations


def proxy_routes(body: str = "  KSR.tm.t_relay()\n", extra: str = "", *,
                 count_runs: bool = False) -> str:
    """A request route that relays CANCEL (when its INVITE transaction exists) and ACK
    as Kamailio's example does, then runs ``body`` (default: ``t_relay``); ``extra`` is
    more Lua after it (other routes). With ``count_runs`` each run is counted in
    ``$shv(runs)`` (a hop-by-hop ACK or a retransmission never gets here: the
    transaction absorbs it)."""
    count = "  KSR.pv.seti('$shv(runs)', KSR.pv.get('$shv(runs)') + 1)\n" if count_runs else ""
    return (
        "function ksr_request_route()\n"
        f"{count}"
        "  if KSR.is_CANCEL() then\n"
        "    if KSR.tm.t_check_trans() > 0 then KSR.tm.t_relay() end\n"
        "    return\n"
        "  end\n"
        "  if KSR.is_ACK() then KSR.tm.t_relay() return end\n"
        f"{body}"
        "end\n"
        f"{extra}"
    )
