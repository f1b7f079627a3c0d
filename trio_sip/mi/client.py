"""``trio-sip ctl``: call the management interface of a running server.

::

    trio-sip ctl tm.stats
    trio-sip ctl stats.get_statistics core: tm:
    trio-sip ctl app_lua.reload
    trio-sip ctl --params '{"limit": 5}' tm.list
    trio-sip ctl --list
    trio-sip ctl --json tm.stats        # the result as JSON, for scripts

Positional params are JSON values when they read as one (``5``, ``true``,
``{"a": 1}``) and strings otherwise; ``s:5`` forces the string ``"5"`` (kamcmd's
convention). The server is ``--url``, else ``$TRIO_SIP_MI_URL``, else the
``mi.listen`` of ``--config FILE``, else ``http://127.0.0.1:8090/``; the token is
``--token``, else ``$TRIO_SIP_MI_TOKEN``, else ``mi.token`` of the config.

The result is printed readably (:func:`format_result`): a mapping as ``key: value``
lines with nested mappings and lists indented under their key, a list of scalars one
per line, a list of records (mappings with scalar values) as a table with a header
line, a short list of scalars under a key on the key's line (``a, b``); strings without
quotes. ``--json`` prints the raw result as indented JSON
instead (what scripts should parse). Exit status: 0 success, 1 the server
answered a JSON-RPC error, 2 usage, connection or HTTP errors.

Plain blocking ``http.client``: one request per run, no event loop needed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, TextIO

from ..config import ConfigError, load_config, split_mi_listen

__all__ = ["DEFAULT_URL", "CtlError", "RpcError", "call", "format_result", "parse_param",
           "run_ctl"]

DEFAULT_URL: Final = "http://127.0.0.1:8090/"
EXIT_OK: Final = 0
EXIT_RPC_ERROR: Final = 1
EXIT_USAGE: Final = 2


class CtlError(Exception):
    """Usage, connection or HTTP trouble (exit status 2)."""


class RpcError(Exception):
    """The server answered a JSON-RPC error (exit status 1)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data


def parse_param(text: str) -> Any:
    """A command-line param: ``s:...`` is a string; JSON if it parses; else a string."""
    if text.startswith("s:"):
        return text[2:]
    try:
        return json.loads(text)
    except ValueError:
        return text


def url_from_listen(listen: str) -> str:
    """The URL to reach a server listening on ``mi.listen`` (a wildcard address is
    reached on loopback)."""
    host, port = split_mi_listen(listen)
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def call(url: str, method: str, params: Any = None, *, token: str | None = None,
         timeout: float = 40.0, request_id: int = 1) -> Any:
    """One JSON-RPC call; returns the result, raises RpcError or CtlError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CtlError(f"bad URL {url!r} (expected http://HOST:PORT/)")
    try:
        port = parts.port
    except ValueError:
        raise CtlError(f"bad port in URL {url!r}") from None
    conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                else http.client.HTTPConnection)
    conn = conn_cls(parts.hostname, port, timeout=timeout)
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        request["params"] = params
    body = json.dumps(request).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", parts.path or "/", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
        raise CtlError(f"cannot reach the management interface at {url}: {why}") from None
    finally:
        conn.close()
    if resp.status != 200:
        text = data.decode("utf-8", "replace").strip()
        raise CtlError(f"{url}: HTTP {resp.status} {resp.reason}" + (f": {text}" if text else ""))
    try:
        reply = json.loads(data)
    except ValueError:
        raise CtlError(f"{url}: the reply is not JSON") from None
    if not isinstance(reply, dict):
        raise CtlError(f"{url}: unexpected reply {reply!r:.200}")
    error = reply.get("error")
    if isinstance(error, dict):
        raise RpcError(int(error.get("code", 0)), str(error.get("message", "")),
                       error.get("data"))
    return reply.get("result")


def _resolve(url: str | None, token: str | None, config: str | None) -> tuple[str, str | None]:
    cfg_url: str | None = None
    cfg_token: str | None = None
    if config is not None:
        cfg = load_config(config)
        if cfg.mi.listen:
            cfg_url = url_from_listen(cfg.mi.listen)
        cfg_token = cfg.mi.token
    final_url = url or os.environ.get("TRIO_SIP_MI_URL") or cfg_url or DEFAULT_URL
    final_token = token or os.environ.get("TRIO_SIP_MI_TOKEN") or cfg_token
    return final_url, final_token


def run_ctl(method: str | None, params: Sequence[str], *, url: str | None = None,
            token: str | None = None, config: str | None = None, raw_params: str | None = None,
            list_methods: bool = False, timeout: float = 40.0, as_json: bool = False,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``trio-sip ctl``: returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        if list_methods:
            if method is not None or params or raw_params is not None:
                raise CtlError("--list takes no method or params")
        elif method is None:
            raise CtlError("name a method (trio-sip ctl --list shows them)")
        if params and raw_params is not None:
            raise CtlError("give the params either as arguments or with --params, not both")
        value: Any = None
        if raw_params is not None:
            try:
                value = json.loads(raw_params)
            except ValueError as exc:
                raise CtlError(f"--params is not JSON: {exc}") from None
            if not isinstance(value, (list, dict)):
                raise CtlError("--params must be a JSON array or object")
        elif params:
            value = [parse_param(p) for p in params]
        target, secret = _resolve(url, token, config)
        if list_methods:
            commands = call(target, "mi.list", None, token=secret, timeout=timeout)
            width = max((len(c.get("name", "")) for c in commands), default=0)
            for c in commands:
                doc = (c.get("doc") or "").strip().splitlines()
                out.write(f"{c.get('name', ''):<{width}}  {doc[0] if doc else ''}".rstrip()
                          + "\n")
            return EXIT_OK
        assert method is not None
        result = call(target, method, value, token=secret, timeout=timeout)
    except ConfigError as exc:
        err.write(f"trio-sip ctl: {exc}\n")
        return EXIT_USAGE
    except CtlError as exc:
        err.write(f"trio-sip ctl: {exc}\n")
        return EXIT_USAGE
    except RpcError as exc:
        err.write(f"error {exc.code}: {exc.message}\n")
        if exc.data is not None:
            err.write(json.dumps(exc.data, indent=2, ensure_ascii=False) + "\n")
        return EXIT_RPC_ERROR
    if as_json:
        out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    else:
        text = format_result(result)
        out.write(text + "\n" if text else "")
    return EXIT_OK


# -- readable output ------------------------------------------------------------------------

#: a table is drawn for a list of at most this many records with scalar values
_MAX_TABLE_COLUMNS: Final = 12
#: a list of scalars under a key is shown on the key's line up to this width
_INLINE_WIDTH: Final = 60


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value.is_integer() or abs(value) >= 1e-3 else repr(value)
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_records(value: Any) -> bool:
    """A non-empty list of mappings whose values are all scalars (a table)."""
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values())
               for v in value):
        return False
    columns = {k for v in value for k in v}
    return len(columns) <= _MAX_TABLE_COLUMNS


def _table(rows: list[dict[str, Any]], indent: str) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[_scalar(row.get(c, "")) if c in row else "" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                   for row in rows if c in row) for c in columns]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line([c.upper() for c in columns]), *(line(r) for r in cells)]


def _lines(value: Any, indent: str) -> list[str]:
    if _is_scalar(value):
        return [indent + _scalar(value)]
    if isinstance(value, dict):
        if not value:
            return [indent + "(none)"]
        width = max(len(str(k)) for k in value) + 1
        out: list[str] = []
        for key, item in value.items():
            label = f"{key}:"
            if _is_scalar(item):
                text = _scalar(item)
                out.append(f"{indent}{label:<{width}} {text}".rstrip() if "\n" not in text
                           else f"{indent}{label}")
                if "\n" in text:
                    out.extend(indent + "  " + t for t in text.splitlines())
            elif isinstance(item, (dict, list)) and not item:
                out.append(f"{indent}{label:<{width}} (none)")
            elif isinstance(item, list) and all(_is_scalar(x) for x in item) and len(
                    inline := ", ".join(_scalar(x) for x in item)) <= _INLINE_WIDTH:
                out.append(f"{indent}{label:<{width}} {inline}")
            else:
                out.append(f"{indent}{label}")
                out.extend(_lines(item, indent + "  "))
        return out
    if isinstance(value, list):
        if not value:
            return [indent + "(none)"]
        if _is_records(value):
            return _table(value, indent)
        out = []
        for item in value:
            if _is_scalar(item):
                out.append(indent + _scalar(item))
            else:
                sub = _lines(item, indent + "  ")
                out.append(indent + "- " + sub[0][len(indent) + 2:])
                out.extend(sub[1:])
        return out
    return [indent + str(value)]


def format_result(result: Any) -> str:
    """A command's result as text for a person (``trio-sip ctl`` without ``--json``)."""
    return "\n".join(_lines(result, ""))
