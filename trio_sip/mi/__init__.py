"""The management interface: commands with Kamailio's RPC names, served as JSON-RPC 2.0
over HTTP (``[mi]``), called by ``trio-sip ctl`` and from Lua (``KSR.mi``).

* :mod:`trio_sip.mi.registry`: :class:`MiRegistry` (commands, statistics groups,
  JSON-RPC processing), :class:`MiContext`, :class:`MiError` and the error codes;
* :mod:`trio_sip.mi.commands`: the built-in commands and :func:`build_registry`;
* :mod:`trio_sip.mi.reload`: ``app_lua.reload`` and the engine generations;
* :mod:`trio_sip.mi.cfg`: ``cfg.get``/``cfg.set``... (runtime-settable values),
  ``corex.debug``/``debug.level``;
* :mod:`trio_sip.mi.tm_reply`: ``tm.t_reply``/``tm.reply`` to a pending transaction;
* :mod:`trio_sip.mi.http`: the HTTP/1.1 server, :func:`serve_mi`, and ``GET /metrics``
  (:mod:`trio_sip.mi.metrics`, Prometheus text);
* :mod:`trio_sip.mi.client`: ``trio-sip ctl``.

Modules declare their commands with ``ModuleBuilder.mi`` (trio_sip/script/exports.py).
"""

from __future__ import annotations

from .registry import InvalidParams, MiCommand, MiContext, MiError, MiRegistry

__all__ = ["InvalidParams", "MiCommand", "MiContext", "MiError", "MiRegistry"]
