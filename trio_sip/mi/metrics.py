"""Prometheus text exposition (format 0.0.4) of every statistic, served at ``/metrics``.

The statistics are the groups ``stats.get_statistics all`` lists
(:func:`trio_sip.mi.commands.statistics`): core, tm, one per transport protocol,
script, mi, the modules' (usrloc, rtpengine...) and those added with
``MiRegistry.add_stats_group``. Each ``group:name`` becomes one metric:

* the name is ``trio_sip_<group>_<name>``, lower-cased, every character outside
  ``[a-z0-9_]`` replaced by ``_`` and runs of ``_`` collapsed
  (``tm:UAS_transactions`` -> ``trio_sip_tm_uas_transactions_total``,
  ``tm:2xx_transactions`` -> ``trio_sip_tm_2xx_transactions_total``);
* a counter (a number that only grows until ``stats.reset_statistics``) gets the
  ``_total`` suffix and ``# TYPE ... counter``; a gauge (a number that goes up and
  down: transactions in use, open connections, registered contacts, pending
  coroutines...) keeps its name and gets ``# TYPE ... gauge``. Gauges are the names in
  :data:`GAUGES` and those a group declares (``add_stats_group(..., gauges=...)``);
  every other statistic is a counter;
* ``# HELP`` names the statistic as ``stats.get_statistics`` shows it
  (``tm:UAS_transactions``), so a metric can be traced back to its source;
* two statistics that map to the same metric name (they differ only in case or
  punctuation): the first in sorted order is exposed, the other skipped and counted
  in ``trio_sip_metrics_name_collisions``.

Besides the statistics: ``trio_sip_info{version="..."} 1``,
``trio_sip_start_time_seconds`` (Unix time the server started) and
``trio_sip_uptime_seconds``.

Counters that never moved are absent, as in ``stats.get_statistics`` (they are
created on first use); Prometheus treats a series that appears as starting at its
first value, so ``rate()`` and ``increase()`` are right from the second scrape.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Final

from .. import __version__
from .registry import MiContext

__all__ = ["CONTENT_TYPE", "GAUGES", "exposition", "metric_name"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "trio_sip"

#: statistics that are gauges, as ``group:name``; ``*:name`` for any group
GAUGES: Final = frozenset({
    "tm:inuse_transactions", "tm:active_transactions",
    "*:open_connections",
    "script:generation", "script:pending_coroutines", "script:engines_in_flight",
    "usrloc:records", "usrloc:contacts", "usrloc:registered_users",
    "rtpengine:pending", "rtpengine:sticky_calls", "rtpengine:nodes",
    "rtpengine:nodes_active",
    "http_client:pending", "http_client:connections",
    "dns:cache_entries", "dns:blocklist_entries",
})

_BAD: Final = re.compile(r"[^a-z0-9_]+")
_UNDERSCORES: Final = re.compile(r"_{2,}")


def metric_name(group: str, name: str, *, counter: bool) -> str:
    """The Prometheus name of the statistic ``group:name``."""
    raw = f"{PREFIX}_{group}_{name}".lower()
    out = _UNDERSCORES.sub("_", _BAD.sub("_", raw)).rstrip("_")
    if counter and not out.endswith("_total"):
        out += "_total"
    return out


def _help_text(text: str) -> str:
    # HELP escapes: backslash and newline (exposition format 0.0.4)
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _is_gauge(group: str, name: str, extra: Iterable[str]) -> bool:
    return f"{group}:{name}" in GAUGES or f"*:{name}" in GAUGES or name in extra


def render(groups: Mapping[str, Mapping[str, float]], *, started: float, now: float,
           gauges: Mapping[str, Iterable[str]] | None = None) -> str:
    """The exposition text of ``groups`` (``{group: {name: value}}``)."""
    gauges = gauges or {}
    lines: list[str] = [
        f"# HELP {PREFIX}_info trio-sip version",
        f"# TYPE {PREFIX}_info gauge",
        f'{PREFIX}_info{{version="{_label_value(__version__)}"}} 1',
        f"# HELP {PREFIX}_start_time_seconds when the server started (Unix time)",
        f"# TYPE {PREFIX}_start_time_seconds gauge",
        f"{PREFIX}_start_time_seconds {_number(round(started, 3))}",
        f"# HELP {PREFIX}_uptime_seconds seconds since the server started",
        f"# TYPE {PREFIX}_uptime_seconds gauge",
        f"{PREFIX}_uptime_seconds {_number(round(max(0.0, now - started), 3))}",
    ]
    seen: set[str] = set()
    collisions = 0
    for group in sorted(groups):
        extra = frozenset(gauges.get(group, ()))
        values = groups[group]
        for name in sorted(values):
            value: object = values[name]
            if not isinstance(value, (int, float)):
                continue  # a provider's non-numeric entry: nothing to expose
            gauge = _is_gauge(group, name, extra)
            metric = metric_name(group, name, counter=not gauge)
            if metric in seen:
                collisions += 1
                continue
            seen.add(metric)
            kind = "gauge" if gauge else "counter"
            lines.append(f"# HELP {metric} {_help_text(f'{group}:{name}')}")
            lines.append(f"# TYPE {metric} {kind}")
            lines.append(f"{metric} {_number(value)}")
    lines.append(f"# HELP {PREFIX}_metrics_name_collisions statistics not exposed: "
                 "their metric name was taken")
    lines.append(f"# TYPE {PREFIX}_metrics_name_collisions gauge")
    lines.append(f"{PREFIX}_metrics_name_collisions {collisions}")
    return "\n".join(lines) + "\n"


def exposition(ctx: MiContext) -> str:
    """Every statistic of the server behind ``ctx``, as Prometheus text."""
    from .commands import statistics

    ctx.stats["metrics_scrapes"] += 1
    return render(statistics(ctx), started=ctx.started, now=time.time(),
                  gauges=ctx.registry.stats_gauges())
