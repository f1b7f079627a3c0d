"""The server's configuration: a TOML file read into frozen dataclasses.

Theory of operation
-------------------
A config is built in three steps, each of which may raise :class:`ConfigError`:

1. ``load_config`` reads the TOML file into plain dicts (a syntax error names the
   file, line and column) and makes the relative paths *written in the file*
   relative to the file's directory, so ``routes = "routes/main.lua"`` next to
   the config works whatever the current directory is. Paths given on the
   command line (``--routes``, ``--set``) stay relative to the current directory,
   as a shell user expects.
2. Each ``--set SECTION.KEY=VALUE`` override is parsed from text by the type of
   the field it targets and written over the file's value.
3. ``config_from_dict`` checks every section and key against the dataclasses,
   converts values by the field's annotated type, and constructs the frozen
   sections, whose ``__post_init__`` runs the per-field checks (kept as data in
   the field metadata) and then the checks that involve several fields.

Why generic, from the dataclass fields: adding a setting is adding one annotated
field with its default and its checks; parsing, ``--set``, the unknown-key errors
and the example-file test follow without further code. A new section is a new
``_Section`` dataclass and a field of :class:`Config`.

Why strict: a typo in a config key (``fr_inv_timeout``) that silently keeps the
default is a production incident found weeks later. Unknown sections and keys
are errors with a "did you mean"; values of the wrong TOML type are errors, not
coerced (``fr_timer = "30"`` is refused, ``tcp_idle_timeout = 120`` is accepted
because an integer *is* a number of seconds).

Why frozen: the config is shared by every task for the life of the process; a
task that wants a different timer sets it on its own transaction (``t_set_fr``),
never on the shared config. Constructing a section directly
(``TmConfig(fr_timer=-1)``, ``dataclasses.replace``) runs the same checks.

``[modparams.NAME]`` tables are kept as read-only mappings: only the module
registry knows each module's params, and it raises ``ConfigError`` with the key
``modparams.NAME.PARAM`` itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from types import MappingProxyType
from typing import Any, ClassVar, Final, NoReturn

from trio_sip.log import CANONICAL_LEVELS, LEVELS

__all__ = [
    "ENGINES",
    "LISTEN_PROTOS",
    "NO_VALUE",
    "Config",
    "ConfigError",
    "CoreConfig",
    "DnsConfig",
    "ListenSpec",
    "LuaConfig",
    "MiConfig",
    "TmConfig",
    "config_from_dict",
    "default_routes_path",
    "load_config",
    "split_hostport",
]


# --------------------------------------------------------------------------- errors


class _NoValue:
    """Type of :data:`NO_VALUE`: an error about a whole file has no value to show."""

    def __repr__(self) -> str:
        return "NO_VALUE"


#: ``ConfigError.value`` when the error is not about one value (unreadable file,
#: TOML syntax error, malformed ``--set``). ``None`` cannot serve: it is a real
#: value of optional fields.
NO_VALUE: Final = _NoValue()

_MAX_SHOWN = 120


def _format_value(value: object) -> str:
    """Show a value as it would be written in TOML, so the user recognises it."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, ListenSpec):
        text = json.dumps(str(value))
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_format_value(item) for item in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_format_value(v)}" for k, v in value.items()) + "}"
    elif value is None:
        text = "(unset)"
    else:
        text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


class ConfigError(Exception):
    """A config value that cannot be used, naming the key, the value and the rule.

    ``key`` is the dotted path of the setting (``core.listen[1]``,
    ``modparams.tm.fr_timer``) or, for a file that cannot be read or parsed, the
    file name. ``value`` is the offending value as read (or :data:`NO_VALUE`).
    ``rule`` says what was expected, in words a user can act on. The message
    reads ``config error: KEY = VALUE: RULE``.
    """

    def __init__(self, key: str, value: object, rule: str) -> None:
        self.key = key
        self.value = value
        self.rule = rule
        super().__init__(key, value, rule)

    def __str__(self) -> str:
        if self.value is NO_VALUE:
            return f"config error: {self.key}: {self.rule}"
        return f"config error: {self.key} = {_format_value(self.value)}: {self.rule}"


def _fail(key: str, value: object, rule: str) -> NoReturn:
    raise ConfigError(key, value, rule)


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    """The rule for an unknown name: a close match if there is one, else the list."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {what}; did you mean {close[0]!r}?"
    return f"unknown {what} (known: {', '.join(known)})"


# ------------------------------------------------------------------ addresses


#: Transports a listen address may name. TLS and WebSocket will join them.
LISTEN_PROTOS: Final = ("udp", "tcp")

_LISTEN_SYNTAX: Final = f"expected PROTO:ADDR:PORT (proto {'|'.join(LISTEN_PROTOS)})"
_LISTEN_RE: Final = re.compile(
    r"(?P<proto>[A-Za-z]+):(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)"
)


def _not_an_ip(host: str) -> str:
    return (
        f"ADDR must be an IP address, not {host!r} (names are not resolved to bind;"
        " put them in core.advertise or core.aliases)"
    )


@dataclass(frozen=True)
class ListenSpec:
    """One address to bind: ``proto`` (udp|tcp), ``host`` (an IP literal, IPv6
    without brackets) and ``port`` (0 lets the OS choose, which tests use).

    Only IP literals: resolving a name at bind time would make the bound
    address depend on DNS and /etc/hosts on the day of the restart, and a name
    that resolves to several addresses binds only one of them. Use
    ``core.advertise`` or ``core.aliases`` for names.
    """

    proto: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.proto not in LISTEN_PROTOS:
            raise ValueError(f"unsupported protocol {self.proto!r}; {_LISTEN_SYNTAX}")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(_not_an_ip(self.host)) from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"PORT must be 0..65535, not {self.port}")

    @classmethod
    def parse(cls, text: str) -> ListenSpec:
        """Parse ``udp:127.0.0.1:5060`` or ``tcp:[::1]:5060``; ValueError says the rule."""
        match = _LISTEN_RE.fullmatch(text.strip())
        if match is None:
            if "[" not in text and text.count(":") > 2:
                raise ValueError(f"{_LISTEN_SYNTAX}; IPv6 goes in brackets, as in tcp:[::1]:5060")
            raise ValueError(_LISTEN_SYNTAX)
        proto = match["proto"].lower()
        if proto not in LISTEN_PROTOS:
            raise ValueError(f"unsupported protocol {proto!r}; {_LISTEN_SYNTAX}")
        host = match["v6"] or match["host"]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(_not_an_ip(host)) from None
        if match["v6"] and address.version != 6:
            raise ValueError(f"brackets are for IPv6 addresses, not {host!r}")
        return cls(proto, str(address), int(match["port"]))

    @property
    def hostport(self) -> str:
        """``127.0.0.1:5060`` or ``[::1]:5060``, as it appears in a Via."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.proto}:{self.hostport}"


# RFC 3261 §25.1: hostname = *( domainlabel "." ) toplabel [ "." ]
#   domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
#   toplabel    = ALPHA / ALPHA *( alphanum / "-" ) alphanum
_HOSTNAME_RE: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*"
    r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
)
_HOSTPORT_RE: Final = re.compile(
    r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]+))?"
)
_HOSTPORT_RULE: Final = "expected HOST or HOST:PORT (a host name, an IPv4 address or [IPv6])"


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` as used by ``core.advertise`` and ``core.aliases``.

    Returns the host (IPv6 without brackets) and the port or None. Raises
    ValueError with the rule. The host is a name (RFC 3261 ``hostname``), an
    IPv4 address or a bracketed IPv6 address, which is what may follow ``sip:``
    and appear in a Via ``sent-by``.
    """
    match = _HOSTPORT_RE.fullmatch(text)
    if match is None:
        raise ValueError(_HOSTPORT_RULE)
    port = None if match["port"] is None else int(match["port"])
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"PORT must be 1..65535, not {port}")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ValueError(f"{match['v6']!r} in brackets is not an IPv6 address") from None
        return match["v6"], port
    host: str = match["host"]
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ValueError(f"{host!r} is neither a host name nor an IPv4 address") from None
    return host, port


# ------------------------------------------------------------------- field checks
#
# A check is called with the dotted key and the field's value and raises
# ConfigError. They live in each field's metadata so that the dataclass is the
# single place a setting is declared.

_Check = Callable[[str, Any], None]


def _checks(*checks: _Check, path: bool = False, runtime: bool = False) -> dict[str, object]:
    """Field metadata: the checks to run, whether the value is a file path
    (relative paths in a config file are then taken from the file's directory), and
    whether it may change while the server runs (``runtime``: ``cfg.set`` over the
    management interface, trio_sip/mi/cfg.py; the code reading it must read it at
    each use, never keep a copy)."""
    return {"checks": checks, "path": path, "runtime": runtime}


def _at_least(low: float) -> _Check:
    def check(key: str, value: float) -> None:
        if value < low:
            _fail(key, value, f"must be >= {low}")

    return check


def _between(low: int, high: int) -> _Check:
    def check(key: str, value: int) -> None:
        if not low <= value <= high:
            _fail(key, value, f"must be between {low} and {high}")

    return check


def _positive(key: str, value: float) -> None:
    if value <= 0:
        _fail(key, value, "must be > 0")


def _one_of(choices: Sequence[str], shown: str | None = None) -> _Check:
    def check(key: str, value: str) -> None:
        if value not in choices:
            _fail(key, value, f"expected one of {shown or '|'.join(choices)}")

    return check


def _not_empty(key: str, value: str | tuple[object, ...]) -> None:
    if not value:
        _fail(key, value, "must not be empty")


def _no_control_chars(key: str, value: str) -> None:
    # It goes into a header line: a CR or LF would inject headers.
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        _fail(key, value, "must not contain control characters (it is sent in a header)")


def _each(check: _Check) -> _Check:
    def check_all(key: str, values: tuple[Any, ...]) -> None:
        for index, item in enumerate(values):
            check(f"{key}[{index}]", item)

    return check_all


def _optional(check: _Check) -> _Check:
    def check_if_set(key: str, value: object) -> None:
        if value is not None:
            check(key, value)

    return check_if_set


def _hostport(key: str, value: str) -> None:
    try:
        split_hostport(value)
    except ValueError as exc:
        _fail(key, value, str(exc))


_LUA_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LUA_KEYWORDS: Final = frozenset(
    {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto",
        "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true",
        "until", "while",
    }
)  # fmt: skip


def _lua_name(key: str, value: str) -> None:
    if not _LUA_NAME_RE.fullmatch(value) or value in _LUA_KEYWORDS:
        _fail(key, value, "must be a Lua global function name")


def _lua_dir(key: str, value: str) -> None:
    # The runtime appends "<dir>/?.lua" to package.path, where ";" separates
    # entries and "?" is the module placeholder: either in a dir breaks lookup.
    if not value or ";" in value or "?" in value:
        _fail(key, value, "must be a non-empty directory path without ';' or '?'")


def _distinct_listen(key: str, specs: tuple[ListenSpec, ...]) -> None:
    seen: dict[ListenSpec, int] = {}
    for index, spec in enumerate(specs):
        if spec.port != 0 and spec in seen:
            _fail(f"{key}[{index}]", spec, f"duplicate of {key}[{seen[spec]}]")
        seen.setdefault(spec, index)


# ---------------------------------------------------------------------- sections


@dataclass(frozen=True)
class _Section:
    """Base of the config sections: runs the field checks on construction."""

    #: The TOML table name, used to build the dotted keys in errors.
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            for check in f.metadata.get("checks", ()):
                check(f"{self.SECTION}.{f.name}", getattr(self, f.name))
        self._check_together()

    def _check_together(self) -> None:
        """Checks that involve several fields; run after every field passed its own."""


def default_routes_path() -> str:
    """The routes file shipped in the package, used when the config names none.

    A file-system path: the package is installed as files (wheel or editable),
    not imported from a zip.
    """
    return str(files("trio_sip") / "data/routes/default.lua")


_DEFAULT_LISTEN: Final = (
    ListenSpec("udp", "127.0.0.1", 5060),
    ListenSpec("tcp", "127.0.0.1", 5060),
)

_LOG_LEVEL_RULE: Final = f"{'|'.join(CANONICAL_LEVELS)} (or Kamailio's dbg, warn, err, crit)"


@dataclass(frozen=True)
class CoreConfig(_Section):
    """``[core]``: where to listen, how to present ourselves, resource bounds.

    ``loopback_only`` (default true) refuses any non-loopback listen address: a
    proxy whose routes are still being written should not be an open relay on a
    public interface by accident. Turning it off is one deliberate line.

    ``advertise`` is the ``host[:port]`` written in Via and Record-Route instead
    of the bound address (behind NAT, or bound to 0.0.0.0). ``aliases`` are other
    names and addresses that mean "this proxy" when matching Request-URIs and
    Routes (Kamailio's ``alias``).

    ``workers`` server processes share the listen addresses (SO_REUSEPORT); each
    also has its own UDP port for Via: ``worker_port_base`` + its index (+ the
    number of workers times the UDP listener's position), or one the OS picks
    when it is 0 (docs/workers.md).

    ``max_message_size`` bounds one message on any transport (1024..1 MiB); UDP
    cannot carry more than 65507 bytes anyway, so the default lets any datagram
    in and bounds what a TCP peer may make us buffer.
    """

    SECTION: ClassVar[str] = "core"

    listen: tuple[ListenSpec, ...] = field(
        default=_DEFAULT_LISTEN, metadata=_checks(_not_empty, _distinct_listen)
    )
    loopback_only: bool = True
    advertise: str | None = field(default=None, metadata=_checks(_optional(_hostport)))
    aliases: tuple[str, ...] = field(default=(), metadata=_checks(_each(_hostport)))
    max_message_size: int = field(default=65535, metadata=_checks(_between(1024, 1 << 20)))
    udp_queue_size: int = field(default=1024, metadata=_checks(_at_least(1)))
    tcp_max_connections: int = field(default=2048, metadata=_checks(_at_least(1)))
    tcp_idle_timeout: float = field(default=120.0, metadata=_checks(_positive))
    tcp_connect_timeout: float = field(default=5.0, metadata=_checks(_positive))
    server_header: str = field(default="trio-sip", metadata=_checks(_no_control_chars))
    log_level: str = field(
        default="info", metadata=_checks(_one_of(tuple(LEVELS), _LOG_LEVEL_RULE), runtime=True)
    )
    data_dir: str = field(default="var", metadata=_checks(_not_empty, path=True))
    #: server processes (``trio-sip run --workers N``, docs/workers.md)
    workers: int = field(default=1, metadata=_checks(_between(1, 64)))
    #: first of the workers' own UDP ports (Via); 0: ports the OS picks
    worker_port_base: int = field(default=0, metadata=_checks(_between(0, 65535)))
    #: allocations between two young collections of Python's cyclic GC in a server
    #: process (``gc.set_threshold``; Python's own is 700; 0 keeps it). docs/performance.md
    gc_threshold: int = field(default=50000, metadata=_checks(_between(0, 10_000_000)))

    def _check_together(self) -> None:
        if self.worker_port_base:
            udp = sum(1 for spec in self.listen if spec.proto == "udp")
            last = self.worker_port_base + udp * self.workers - 1
            if last > 65535:
                _fail("core.worker_port_base", self.worker_port_base,
                      f"the workers' ports would end at {last}, above 65535")
        if not self.loopback_only:
            return
        for index, spec in enumerate(self.listen):
            if not ipaddress.ip_address(spec.host).is_loopback:
                _fail(
                    f"core.listen[{index}]",
                    spec,
                    "not a loopback address while core.loopback_only = true"
                    " (set it to false to listen on other interfaces)",
                )


#: Lua engines lupa provides. LuaJIT runs Lua 5.1 code, which is what KEMI
#: scripts written for Kamailio's Debian build (Lua 5.1) are.
ENGINES: Final = ("luajit", "lua54", "lua53", "lua52", "lua51")


@dataclass(frozen=True)
class LuaConfig(_Section):
    """``[lua]``: the routes file, the engine that runs it, and its entry points.

    ``path`` adds directories to ``package.path`` for the routes' own
    ``require``; the packaged lua/ helpers are always available (the runtime adds
    them, so a config cannot lose them by setting ``path``).
    """

    SECTION: ClassVar[str] = "lua"

    routes: str = field(
        default_factory=default_routes_path, metadata=_checks(_not_empty, path=True)
    )
    engine: str = field(default="luajit", metadata=_checks(_one_of(ENGINES)))
    path: tuple[str, ...] = field(default=(), metadata=_checks(_each(_lua_dir), path=True))
    request_route: str = field(default="ksr_request_route", metadata=_checks(_lua_name))
    reply_route: str = field(default="ksr_reply_route", metadata=_checks(_lua_name))
    #: CPU time (ms) a route may run without waiting before it is stopped with an error
    #: naming its file:line (a request gets a 500); 0: no limit. With a limit LuaJIT's
    #: JIT is off (compiled code calls no hooks). README, "A first route"
    route_budget_ms: int = field(default=1000,
                                 metadata=_checks(_between(0, 3_600_000), runtime=True))


@dataclass(frozen=True)
class TmConfig(_Section):
    """``[tm]``: transaction timers in milliseconds, with Kamailio's defaults.

    The names are Kamailio's tm modparams so that a Kamailio config translates
    line for line: ``retr_timer1``/``retr_timer2`` are RFC 3261's T1/T2, ``t4``
    is T4, ``fr_timer`` waits for a final reply (or, for INVITE, for the first
    provisional), ``fr_inv_timer`` waits for the final reply of an INVITE once a
    provisional came, ``wt_timer`` keeps a completed transaction to absorb
    retransmissions, and ``max_*_lifetime`` cap a transaction whatever replies
    keep restarting its timers.

    Every ``[tm]`` value can be changed while the server runs (``cfg.set tm fr_timer
    10000``); a transaction takes them when it is created and keeps them, so a
    change applies to new transactions only.
    """

    SECTION: ClassVar[str] = "tm"

    fr_timer: int = field(default=30000, metadata=_checks(_positive, runtime=True))
    fr_inv_timer: int = field(default=120000, metadata=_checks(_positive, runtime=True))
    wt_timer: int = field(default=5000, metadata=_checks(_positive, runtime=True))
    retr_timer1: int = field(default=500, metadata=_checks(_positive, runtime=True))
    retr_timer2: int = field(default=4000, metadata=_checks(_positive, runtime=True))
    max_inv_lifetime: int = field(default=180000, metadata=_checks(_positive, runtime=True))
    max_noninv_lifetime: int = field(default=32000, metadata=_checks(_positive, runtime=True))
    restart_fr_on_each_reply: bool = field(default=True, metadata=_checks(runtime=True))
    auto_inv_100: bool = field(default=True, metadata=_checks(runtime=True))
    t4: int = field(default=5000, metadata=_checks(_positive, runtime=True))
    #: OpenSIPS minor_branch_flag: branches with this branch flag (0..31) are not waited
    #: for and are cancelled when every other branch failed; -1 disables
    minor_branch_flag: int = field(default=-1, metadata=_checks(_between(-1, 31), runtime=True))

    def _check_together(self) -> None:
        # T2 caps the doubling of T1 (RFC 3261 §17.1.2.2): T1 above T2 would make
        # the "cap" shorten the first interval. And a timer longer than the
        # lifetime that bounds it would never fire, silently.
        if self.retr_timer1 > self.retr_timer2:
            _fail(
                "tm.retr_timer1",
                self.retr_timer1,
                f"must be <= tm.retr_timer2 ({self.retr_timer2})",
            )
        if self.fr_timer > self.max_noninv_lifetime:
            _fail(
                "tm.fr_timer",
                self.fr_timer,
                f"must be <= tm.max_noninv_lifetime ({self.max_noninv_lifetime}), which would cut it",
            )
        if self.fr_inv_timer > self.max_inv_lifetime:
            _fail(
                "tm.fr_inv_timer",
                self.fr_inv_timer,
                f"must be <= tm.max_inv_lifetime ({self.max_inv_lifetime}), which would cut it",
            )


def parse_reply_codes(text: str) -> tuple[frozenset[int], frozenset[int]]:
    """Kamailio tm ``failover_reply_codes``: ``"code=408;class=3"`` into (codes, classes).
    ValueError says the rule."""
    codes: set[int] = set()
    classes: set[int] = set()
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        kind, _, value = part.partition("=")
        kind, value = kind.strip().lower(), value.strip()
        if kind == "code" and value.isdigit() and 300 <= int(value) <= 699:
            codes.add(int(value))
        elif kind == "class" and value.isdigit() and 3 <= int(value) <= 6:
            classes.add(int(value))
        else:
            raise ValueError(f"{part!r}: expected code=NNN (300..699) or class=N (3..6), "
                             "separated by ';'")
    return frozenset(codes), frozenset(classes)


def _reply_codes(key: str, value: str) -> None:
    try:
        parse_reply_codes(value)
    except ValueError as exc:
        _fail(key, value, str(exc))


def _nameserver(key: str, value: str) -> None:
    from trio_sip.dns.backend import parse_nameserver

    try:
        parse_nameserver(value)
    except ValueError as exc:
        _fail(key, value, str(exc))


@dataclass(frozen=True)
class DnsConfig(_Section):
    """``[dns]``: the resolver (RFC 3263 NAPTR/SRV/A/AAAA) and TM's DNS failover.

    ``nameservers``: ``"ADDR[:PORT]"`` entries (``[V6]:PORT``), asked in turn; empty
    (the default) means the system's (/etc/resolv.conf). While ``core.loopback_only``
    is on only loopback nameservers listed here are asked (not the system's: even a
    loopback stub resolver forwards beyond the machine). ``timeout`` (seconds) bounds one try
    of one server and ``attempts`` is the number of rounds over all of them
    (Kamailio ``dns_retr_time``/``dns_retr_no``). The cache holds ``cache_size``
    answers, each for its TTL clamped to ``min_ttl``..``max_ttl``; NXDOMAIN/NODATA
    for ``negative_ttl`` (``dns_neg_cache_ttl``). ``ipv6`` asks AAAA too
    (``dns_try_ipv6``), ``prefer_ipv6`` tries IPv6 addresses first. ``max_targets``
    bounds the targets of one resolution.

    Failover (OpenSIPS "DNS failover", Kamailio ``use_dns_failover``): a branch whose
    send fails, that gets no reply before fr, or that gets a 503 (or a reply matching
    ``failover_reply_codes``, Kamailio tm syntax ``"code=408;class=6"``) is retried
    on the next target of the same resolution, unless ``disable_failover`` (OpenSIPS
    ``disable_dns_failover``), ``t_set_disable_failover(1)`` or ``t_relay_to_flags``
    0x04. With ``use_blocklist`` a failed destination is skipped for
    ``blocklist_expire`` seconds (Kamailio ``use_dst_blocklist``,
    ``dst_blocklist_expire``), at most ``blocklist_size`` of them.
    """

    SECTION: ClassVar[str] = "dns"

    nameservers: tuple[str, ...] = field(default=(), metadata=_checks(_each(_nameserver)))
    timeout: float = field(default=2.0, metadata=_checks(_positive))
    attempts: int = field(default=2, metadata=_checks(_between(1, 10)))
    cache_size: int = field(default=4096, metadata=_checks(_at_least(0)))
    min_ttl: float = field(default=0.0, metadata=_checks(_at_least(0)))
    max_ttl: float = field(default=86400.0, metadata=_checks(_positive))
    negative_ttl: float = field(default=60.0, metadata=_checks(_at_least(0)))
    ipv6: bool = True
    prefer_ipv6: bool = False
    max_targets: int = field(default=16, metadata=_checks(_between(1, 64)))
    disable_failover: bool = False
    failover_reply_codes: str = field(default="", metadata=_checks(_reply_codes))
    use_blocklist: bool = False
    blocklist_expire: float = field(default=60.0, metadata=_checks(_positive))
    blocklist_size: int = field(default=1024, metadata=_checks(_at_least(1)))

    def _check_together(self) -> None:
        if self.min_ttl > self.max_ttl:
            _fail("dns.min_ttl", self.min_ttl, f"must be <= dns.max_ttl ({self.max_ttl})")


_TOKEN68_RE: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def split_mi_listen(text: str) -> tuple[str, int]:
    """Split ``mi.listen`` (``127.0.0.1:8090``, ``[::1]:8090``) into an IP literal
    (IPv6 without brackets) and a port (0: the OS chooses). ValueError says the rule."""
    match = _HOSTPORT_RE.fullmatch(text.strip())
    if match is None or match["port"] is None:
        raise ValueError("expected ADDR:PORT (an IP address, IPv6 in brackets), or \"\" to disable")
    host = match["v6"] or match["host"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"ADDR must be an IP address, not {host!r}") from None
    if match["v6"] is not None and address.version != 6:
        raise ValueError(f"brackets are for IPv6 addresses, not {host!r}")
    if match["v6"] is None and address.version == 6:
        raise ValueError("IPv6 goes in brackets, as in [::1]:8090")
    port = int(match["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"PORT must be 0..65535, not {port}")
    return str(address), port


def _mi_listen(key: str, value: str) -> None:
    if value == "":
        return
    try:
        split_mi_listen(value)
    except ValueError as exc:
        _fail(key, value, str(exc))


def _token(key: str, value: str) -> None:
    # sent as "Authorization: Bearer TOKEN": RFC 6750 b64token characters only
    if not _TOKEN68_RE.fullmatch(value):
        _fail(key, "(hidden)", "must be a bearer token: letters, digits and -._~+/ (= at the end)")
    if len(value) < 16:
        _fail(key, "(hidden)", "must be at least 16 characters long")


@dataclass(frozen=True)
class MiConfig(_Section):
    """``[mi]``: the management interface, JSON-RPC 2.0 over HTTP (``trio-sip ctl``).

    ``listen`` is ``ADDR:PORT`` (an IP address; port 0 lets the OS choose) or ``""``
    to serve no management interface. ``token``, when set, must come with every
    request as ``Authorization: Bearer TOKEN``; it is required to listen on an
    address that is not loopback (plain HTTP: keep such a port on a trusted network).
    ``max_body_size`` bounds a request body (bytes), ``timeout`` the time a request
    may take to arrive and its reply to leave (seconds), ``command_timeout`` an
    async command (seconds).
    """

    SECTION: ClassVar[str] = "mi"

    listen: str = field(default="127.0.0.1:8090", metadata=_checks(_mi_listen))
    token: str | None = field(default=None, metadata=_checks(_optional(_token)))
    max_body_size: int = field(default=1 << 20, metadata=_checks(_between(1024, 64 << 20)))
    timeout: float = field(default=10.0, metadata=_checks(_positive))
    command_timeout: float = field(default=30.0, metadata=_checks(_positive))

    def __repr__(self) -> str:  # never show the token in logs or tracebacks
        token = None if self.token is None else "(hidden)"
        return (f"MiConfig(listen={self.listen!r}, token={token}, "
                f"max_body_size={self.max_body_size}, timeout={self.timeout}, "
                f"command_timeout={self.command_timeout})")

    def _check_together(self) -> None:
        if not self.listen or self.token is not None:
            return
        host, _port = split_mi_listen(self.listen)
        if not ipaddress.ip_address(host).is_loopback:
            _fail("mi.listen", self.listen,
                  "not a loopback address: set mi.token to serve the management interface"
                  " beyond this machine")


def _no_modparams() -> Mapping[str, Mapping[str, object]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it was read from, if any.

    ``modparams`` maps a module name to its params as read (TOML arrays become
    tuples, tables read-only mappings); the module registry validates them.
    """

    core: CoreConfig = field(default_factory=CoreConfig)
    lua: LuaConfig = field(default_factory=LuaConfig)
    tm: TmConfig = field(default_factory=TmConfig)
    mi: MiConfig = field(default_factory=MiConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    modparams: Mapping[str, Mapping[str, object]] = field(default_factory=_no_modparams)
    source: str | None = None


# ------------------------------------------------------------ type-driven parsing


@functools.cache
def _sections() -> dict[str, type[_Section]]:
    """The section classes, from :class:`Config`'s annotations."""
    hints = typing.get_type_hints(Config)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and issubclass(hint, _Section)
    }


@functools.cache
def _all_field_types() -> dict[str, dict[str, Any]]:
    """Section name -> field name -> resolved annotation (this module uses
    postponed annotations, so the dataclass fields hold strings)."""
    result: dict[str, dict[str, Any]] = {}
    for name, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        result[name] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return result


def _field_types(cls: type[_Section]) -> dict[str, Any]:
    return _all_field_types()[cls.SECTION]


def _is_optional(tp: Any) -> Any:
    """The ``X`` of ``X | None``, or None if *tp* is not such a union."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _coerce(tp: Any, key: str, value: object) -> object:
    """Check a value as read from TOML against the field type *tp*; convert
    where the conversion loses nothing (int to float, array to tuple, string to
    ListenSpec)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(key, value, "expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(key, value, "expected an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            _fail(key, value, "expected a finite number")
        _fail(key, value, "expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(key, value, "expected a string")
    if tp is ListenSpec:
        if isinstance(value, ListenSpec):
            return value
        if not isinstance(value, str):
            _fail(key, value, f"expected a string; {_LISTEN_SYNTAX}")
        try:
            return ListenSpec.parse(value)
        except ValueError as exc:
            _fail(key, value, str(exc))
    inner = _is_optional(tp)
    if inner is not None:
        return None if value is None else _coerce(inner, key, value)
    if typing.get_origin(tp) is tuple:
        item_type, ellipsis = typing.get_args(tp)
        assert ellipsis is Ellipsis, f"{key}: only tuple[X, ...] fields are supported"
        if not isinstance(value, list | tuple):
            _fail(key, value, 'expected an array, as in ["a", "b"]')
        return tuple(_coerce(item_type, f"{key}[{i}]", item) for i, item in enumerate(value))
    raise TypeError(f"config field {key} has a type the loader does not handle: {tp!r}")


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _from_text(tp: Any, key: str, text: str) -> object:
    """Parse a ``--set`` value into what TOML would have given for field type *tp*.

    Arrays are comma-separated (``--set core.aliases=a.example,b.example``; an
    empty value is an empty array); an optional field is unset by an empty
    value (``--set core.advertise=``).
    """
    if tp is bool:
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        _fail(key, text, "expected a boolean (true/false, 1/0, yes/no, on/off)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            _fail(key, text, "expected an integer")
    if tp is float:
        try:
            return float(text)
        except ValueError:
            _fail(key, text, "expected a number")
    if tp is str or tp is ListenSpec:
        return text
    inner = _is_optional(tp)
    if inner is not None:
        return None if text == "" else _from_text(inner, key, text)
    if typing.get_origin(tp) is tuple:
        item_type = typing.get_args(tp)[0]
        parts = [part.strip() for part in text.split(",")]
        return [
            _from_text(item_type, f"{key}[{i}]", part)
            for i, part in enumerate(p for p in parts if p)
        ]
    raise TypeError(f"config field {key} has a type the loader does not handle: {tp!r}")


def _freeze(value: object) -> object:
    """Make a TOML value read-only all the way down (the config is shared)."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _build_modparams(raw: object) -> Mapping[str, Mapping[str, object]]:
    if not isinstance(raw, Mapping):
        _fail("modparams", raw, "expected tables, as in [modparams.tm]")
    modules: dict[str, Mapping[str, object]] = {}
    for name, params in raw.items():
        key = f"modparams.{name}"
        if not _IDENTIFIER_RE.fullmatch(name):
            _fail(key, params, "a module name is an identifier (letters, digits, _)")
        if not isinstance(params, Mapping):
            _fail(key, params, f"expected a table [modparams.{name}] of PARAM = VALUE")
        modules[name] = MappingProxyType({str(k): _freeze(v) for k, v in params.items()})
    return MappingProxyType(modules)


def _build_section(cls: type[_Section], raw: object) -> _Section:
    name = cls.SECTION
    if not isinstance(raw, Mapping):
        _fail(name, raw, f"expected a table [{name}]")
    hints = _field_types(cls)
    kwargs: dict[str, object] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        if key not in hints:
            _fail(dotted, value, _unknown("key", key, list(hints)))
        kwargs[key] = _coerce(hints[key], dotted, value)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, object], source: str | None = None) -> Config:
    """Build a :class:`Config` from a dict shaped like the TOML file.

    Used by :func:`load_config` and directly by tests. Paths are taken as
    given (there is no file to be relative to).
    """
    sections = _sections()
    known = [*sections, "modparams"]
    for name, value in data.items():
        if name not in known:
            _fail(name, value, _unknown("section", name, known))
    kwargs: dict[str, Any] = {
        name: _build_section(cls, data.get(name, {})) for name, cls in sections.items()
    }
    return Config(**kwargs, modparams=_build_modparams(data.get("modparams", {})), source=source)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        _fail(path, NO_VALUE, f"cannot read the config file: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        _fail(path, NO_VALUE, f"not UTF-8 text: {exc}")
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)".
        _fail(path, NO_VALUE, f"invalid TOML: {exc}")


def _resolve_paths(data: dict[str, Any], base: str) -> None:
    """Make the relative paths written in a config file relative to its directory."""
    if not base:
        return
    for name, cls in _sections().items():
        section = data.get(name)
        if not isinstance(section, dict):
            continue
        for f in dataclasses.fields(cls):
            if not f.metadata.get("path") or f.name not in section:
                continue
            value = section[f.name]
            if isinstance(value, str):
                section[f.name] = _join(base, value)
            elif isinstance(value, list):
                section[f.name] = [_join(base, v) if isinstance(v, str) else v for v in value]


def _join(base: str, path: str) -> str:
    return path if not path or os.path.isabs(path) else os.path.join(base, path)


def _modparam_value(text: str) -> object:
    # Kamailio's modparam takes an int or a string and the module converts;
    # the module's param dataclass does the same here, so no further guessing.
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else text


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``SECTION.KEY=VALUE`` (or ``modparams.MODULE.PARAM=VALUE``)."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key:
        _fail(item, NO_VALUE, "expected SECTION.KEY=VALUE")
    parts = key.split(".")
    name = parts[0]
    sections = _sections()
    if name == "modparams":
        if len(parts) != 3 or not all(parts):
            _fail(key, text, "expected modparams.MODULE.PARAM=VALUE")
        modules = data.setdefault("modparams", {})
        params = modules.setdefault(parts[1], {}) if isinstance(modules, dict) else None
        if not isinstance(params, dict):
            _fail(f"modparams.{parts[1]}", params, f"expected a table [modparams.{parts[1]}]")
        params[parts[2]] = _modparam_value(text)
        return
    if name not in sections:
        _fail(key, text, _unknown("section", name, [*sections, "modparams"]))
    if len(parts) != 2 or not parts[1]:
        _fail(key, text, "expected SECTION.KEY=VALUE")
    hints = _field_types(sections[name])
    if parts[1] not in hints:
        _fail(key, text, _unknown("key", parts[1], list(hints)))
    section = data.setdefault(name, {})
    if not isinstance(section, dict):
        _fail(name, section, f"expected a table [{name}]")
    section[parts[1]] = _from_text(hints[parts[1]], key, text)


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> Config:
    """Read the config file at *path* (None: all defaults), then apply *overrides*.

    Each override is ``SECTION.KEY=VALUE`` as given to ``--set``; the value is
    parsed by the type of the field: booleans accept true/false, 1/0, yes/no,
    on/off; arrays (``core.listen``, ``core.aliases``, ``lua.path``) are
    comma-separated; an empty value unsets an optional field. Overrides apply in
    order, after the file, so the last one wins.

    ``modparams.MODULE.PARAM=VALUE`` sets a module param: the value is kept as a
    string, or an int when it is written as one (``-12``, ``300``), as
    Kamailio's ``modparam`` does; the module converts it further.

    Raises :class:`ConfigError` for anything it cannot use.
    """
    data: dict[str, Any] = {}
    source: str | None = None
    if path is not None:
        source = os.fspath(path)
        data = _read_toml(source)
        _resolve_paths(data, os.path.dirname(source))
    for item in overrides:
        _apply_override(data, item)
    return config_from_dict(data, source=source)
