"""Tests of trio_sip.config: defaults, every section, and every way to get it wrong."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

import trio_sip
from trio_sip.config import (
    NO_VALUE,
    Config,
    ConfigError,
    CoreConfig,
    ListenSpec,
    LuaConfig,
    TmConfig,
    config_from_dict,
    load_config,
    split_hostport,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "trio-sip.toml"


def write(tmp_path: Path, text: str, name: str = "trio-sip.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value


def override_error(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return info.value


# ------------------------------------------------------------------ defaults


def test_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.source is None
    core = config.core
    assert core.listen == (
        ListenSpec("udp", "127.0.0.1", 5060),
        ListenSpec("tcp", "127.0.0.1", 5060),
    )
    assert core.loopback_only is True
    assert core.advertise is None
    assert core.aliases == ()
    assert core.max_message_size == 65535
    assert core.udp_queue_size == 1024
    assert core.tcp_max_connections == 2048
    assert core.tcp_idle_timeout == 120.0
    assert core.tcp_connect_timeout == 5.0
    assert core.server_header == "trio-sip"
    assert core.log_level == "info"
    assert core.data_dir == "var"
    lua = config.lua
    assert lua.engine == "luajit"
    assert lua.path == ()
    assert lua.request_route == "ksr_request_route"
    assert lua.reply_route == "ksr_reply_route"
    assert config.modparams == {}


def test_default_routes_is_the_packaged_file() -> None:
    routes = Path(load_config(None).lua.routes)
    assert routes.is_absolute()
    assert routes == Path(trio_sip.__file__).parent / "data" / "routes" / "default.lua"


def test_tm_defaults_are_kamailios() -> None:
    assert TmConfig() == TmConfig(
        fr_timer=30000,
        fr_inv_timer=120000,
        wt_timer=5000,
        retr_timer1=500,
        retr_timer2=4000,
        max_inv_lifetime=180000,
        max_noninv_lifetime=32000,
        restart_fr_on_each_reply=True,
        auto_inv_100=True,
        t4=5000,
    )


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.core.log_level = "debug"  # type: ignore[misc]


# ------------------------------------------------------------ every section


FULL = """
[core]
listen = ["udp:127.0.0.2:5070", "tcp:[::1]:5071", "udp:0.0.0.0:5060"]
loopback_only = false
advertise = "sip.example.com:5060"
aliases = ["proxy.example.com", "192.0.2.7:5080", "[2001:db8::1]"]
max_message_size = 1048576
udp_queue_size = 10
tcp_max_connections = 20
tcp_idle_timeout = 30
tcp_connect_timeout = 1.5
server_header = ""
log_level = "notice"
data_dir = "/var/lib/trio-sip"

[lua]
routes = "/etc/trio-sip/routes.lua"
engine = "lua54"
path = ["/usr/share/lua/site"]
request_route = "on_request"
reply_route = "on_reply"

[tm]
fr_timer = 10000
fr_inv_timer = 60000
wt_timer = 2000
retr_timer1 = 250
retr_timer2 = 2000
max_inv_lifetime = 90000
max_noninv_lifetime = 16000
restart_fr_on_each_reply = false
auto_inv_100 = false
t4 = 2500

[modparams.usrloc]
db_mode = 2
db_url = "sqlite:///var/ul.db"
nat_bflags = [6, 7]

[modparams.htable]
htable = { name = "ipban", size = 8 }
"""


def test_every_section_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.source == path
    assert config.core == CoreConfig(
        listen=(
            ListenSpec("udp", "127.0.0.2", 5070),
            ListenSpec("tcp", "::1", 5071),
            ListenSpec("udp", "0.0.0.0", 5060),
        ),
        loopback_only=False,
        advertise="sip.example.com:5060",
        aliases=("proxy.example.com", "192.0.2.7:5080", "[2001:db8::1]"),
        max_message_size=1048576,
        udp_queue_size=10,
        tcp_max_connections=20,
        tcp_idle_timeout=30.0,
        tcp_connect_timeout=1.5,
        server_header="",
        log_level="notice",
        data_dir="/var/lib/trio-sip",
    )
    assert isinstance(config.core.tcp_idle_timeout, float)
    assert config.lua == LuaConfig(
        routes="/etc/trio-sip/routes.lua",
        engine="lua54",
        path=("/usr/share/lua/site",),
        request_route="on_request",
        reply_route="on_reply",
    )
    assert config.tm == TmConfig(
        fr_timer=10000,
        fr_inv_timer=60000,
        wt_timer=2000,
        retr_timer1=250,
        retr_timer2=2000,
        max_inv_lifetime=90000,
        max_noninv_lifetime=16000,
        restart_fr_on_each_reply=False,
        auto_inv_100=False,
        t4=2500,
    )
    assert config.modparams == {
        "usrloc": {"db_mode": 2, "db_url": "sqlite:///var/ul.db", "nat_bflags": (6, 7)},
        "htable": {"htable": {"name": "ipban", "size": 8}},
    }


def test_modparams_are_read_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(TypeError):
        config.modparams["usrloc"]["db_mode"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        config.modparams["new"] = {}  # type: ignore[index]
    assert isinstance(config.modparams["usrloc"]["nat_bflags"], tuple)
    table = config.modparams["htable"]["htable"]
    with pytest.raises(TypeError):
        table["size"] = 1  # type: ignore[index]


def test_partial_section_keeps_other_defaults() -> None:
    config = config_from_dict({"tm": {"fr_timer": 5000}})
    assert config.tm == dataclasses.replace(TmConfig(), fr_timer=5000)
    assert config.core == CoreConfig()


# --------------------------------------------------------- unknown names


def test_unknown_section_is_named() -> None:
    error = error_of({"cor": {"listen": []}})
    assert error.key == "cor"
    assert "unknown section" in error.rule
    assert "'core'" in error.rule


def test_unknown_section_lists_known_ones() -> None:
    error = error_of({"zzz": {}})
    assert error.rule == "unknown section (known: core, lua, tm, mi, dns, modparams)"


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"core": {"lisen": ["udp:127.0.0.1:5060"]}}, "core.lisen", "listen"),
        ({"tm": {"fr_inv_timeout": 1}}, "tm.fr_inv_timeout", "fr_inv_timer"),
        ({"lua": {"route": "x.lua"}}, "lua.route", "routes"),
    ],
)
def test_unknown_key_is_named_with_a_suggestion(
    data: dict[str, Any], key: str, suggestion: str
) -> None:
    error = error_of(data)
    assert error.key == key
    assert error.rule == f"unknown key; did you mean {suggestion!r}?"


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    error = error_of({"lua": {"zzzzzz": 1}})
    assert error.key == "lua.zzzzzz"
    assert error.value == 1
    assert error.rule == ("unknown key (known: routes, engine, path, request_route, reply_route,"
                          " route_budget_ms)")


def test_section_must_be_a_table() -> None:
    error = error_of({"core": 5})
    assert (error.key, error.value) == ("core", 5)
    assert "table" in error.rule


# --------------------------------------------------------------- bad values


def test_error_message_names_key_value_and_rule() -> None:
    error = error_of({"core": {"listen": ["udp:127.0.0.1:5060", "udp:1.2.3:x"]}})
    assert (error.key, error.value) == ("core.listen[1]", "udp:1.2.3:x")
    assert error.rule == "expected PROTO:ADDR:PORT (proto udp|tcp)"
    assert str(error) == (
        'config error: core.listen[1] = "udp:1.2.3:x": expected PROTO:ADDR:PORT (proto udp|tcp)'
    )


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("udp:127.0.0.1", "expected PROTO:ADDR:PORT"),
        ("127.0.0.1:5060", "expected PROTO:ADDR:PORT"),
        ("sctp:127.0.0.1:5060", "unsupported protocol 'sctp'"),
        ("udp:localhost:5060", "ADDR must be an IP address, not 'localhost'"),
        ("udp:1.2.3:5060", "ADDR must be an IP address, not '1.2.3'"),
        ("udp:::1:5060", "IPv6 goes in brackets"),
        ("udp:[127.0.0.1]:5060", "brackets are for IPv6"),
        ("udp:127.0.0.1:65536", "PORT must be 0..65535"),
        ("udp:127.0.0.1:-1", "expected PROTO:ADDR:PORT"),
    ],
)
def test_bad_listen_specs(spec: str, rule: str) -> None:
    error = error_of({"core": {"listen": [spec]}})
    assert error.key == "core.listen[0]"
    assert error.value == spec
    assert rule in error.rule


def test_listen_must_be_an_array_of_strings() -> None:
    error = error_of({"core": {"listen": "udp:127.0.0.1:5060"}})
    assert error.key == "core.listen"
    assert "expected an array" in error.rule
    error = error_of({"core": {"listen": [5060]}})
    assert error.key == "core.listen[0]"


def test_listen_must_not_be_empty() -> None:
    error = error_of({"core": {"listen": []}})
    assert (error.key, error.rule) == ("core.listen", "must not be empty")


def test_duplicate_listen_is_refused() -> None:
    error = error_of({"core": {"listen": ["udp:127.0.0.1:5060", "UDP:127.0.0.1:5060"]}})
    assert error.key == "core.listen[1]"
    assert error.rule == "duplicate of core.listen[0]"


def test_listen_specs_parse_and_print() -> None:
    v6 = ListenSpec.parse("tcp:[0:0::1]:5060")
    assert v6 == ListenSpec("tcp", "::1", 5060)
    assert str(v6) == "tcp:[::1]:5060"
    assert v6.hostport == "[::1]:5060"
    v4 = ListenSpec.parse("UDP:127.0.0.1:0")
    assert (str(v4), v4.hostport) == ("udp:127.0.0.1:0", "127.0.0.1:0")


def test_listen_spec_checks_direct_construction() -> None:
    with pytest.raises(ValueError, match="unsupported protocol"):
        ListenSpec("tls", "127.0.0.1", 5061)
    with pytest.raises(ValueError, match="IP address"):
        ListenSpec("udp", "example.com", 5060)
    with pytest.raises(ValueError, match="PORT"):
        ListenSpec("udp", "127.0.0.1", 70000)


def test_loopback_only_refuses_other_addresses() -> None:
    error = error_of({"core": {"listen": ["udp:127.0.0.1:5060", "tcp:0.0.0.0:5060"]}})
    assert error.key == "core.listen[1]"
    assert "not a loopback address" in error.rule
    allowed = config_from_dict({"core": {"listen": ["tcp:0.0.0.0:5060"], "loopback_only": False}})
    assert allowed.core.listen == (ListenSpec("tcp", "0.0.0.0", 5060),)


@pytest.mark.parametrize(
    ("section", "key", "value", "rule"),
    [
        ("tm", "fr_timer", -1, "must be > 0"),
        ("tm", "fr_inv_timer", 0, "must be > 0"),
        ("tm", "wt_timer", -5000, "must be > 0"),
        ("tm", "retr_timer1", 0, "must be > 0"),
        ("tm", "t4", -1, "must be > 0"),
        ("tm", "max_inv_lifetime", -1, "must be > 0"),
        ("tm", "fr_timer", "30", "expected an integer"),
        ("tm", "fr_timer", 30.5, "expected an integer"),
        ("tm", "fr_timer", True, "expected an integer"),
        ("tm", "auto_inv_100", "yes", "expected true or false"),
        ("tm", "restart_fr_on_each_reply", 1, "expected true or false"),
        ("core", "tcp_idle_timeout", 0, "must be > 0"),
        ("core", "tcp_connect_timeout", -0.5, "must be > 0"),
        ("core", "tcp_idle_timeout", float("inf"), "expected a finite number"),
        ("core", "tcp_idle_timeout", "60", "expected a number"),
        ("core", "max_message_size", 1023, "must be between 1024 and 1048576"),
        ("core", "max_message_size", 1048577, "must be between 1024 and 1048576"),
        ("core", "udp_queue_size", 0, "must be >= 1"),
        ("core", "tcp_max_connections", 0, "must be >= 1"),
        ("core", "log_level", "verbose", "expected one of debug|info|notice|warning|error"),
        ("core", "log_level", "INFO", "expected one of"),
        ("core", "server_header", "x\r\nVia: evil", "must not contain control characters"),
        ("core", "data_dir", "", "must not be empty"),
        ("core", "advertise", "", "expected HOST or HOST:PORT"),
        ("core", "advertise", "1.2.3", "neither a host name nor an IPv4 address"),
        ("core", "advertise", "sip.example.com:0", "PORT must be 1..65535"),
        ("core", "advertise", "[192.0.2.1]", "is not an IPv6 address"),
        ("core", "advertise", "sip_example.com", "neither a host name"),
        ("core", "aliases", "a.example", "expected an array"),
        ("lua", "engine", "lua55", "expected one of luajit|lua54|lua53|lua52|lua51"),
        ("lua", "engine", "LuaJIT", "expected one of"),
        ("lua", "routes", "", "must not be empty"),
        ("lua", "request_route", "end", "must be a Lua global function name"),
        ("lua", "reply_route", "on-reply", "must be a Lua global function name"),
        ("lua", "path", "lib", "expected an array"),
    ],
)
def test_bad_values(section: str, key: str, value: object, rule: str) -> None:
    error = error_of({section: {key: value}})
    assert error.key == f"{section}.{key}"
    assert error.value == value
    assert rule in error.rule


def test_bad_item_in_an_array_is_named_by_index() -> None:
    error = error_of({"core": {"aliases": ["a.example", "b..example"]}})
    assert (error.key, error.value) == ("core.aliases[1]", "b..example")
    error = error_of({"lua": {"path": ["lib", "x;y"]}})
    assert (error.key, error.value) == ("lua.path[1]", "x;y")
    assert "without ';' or '?'" in error.rule


def test_kamailio_level_aliases_are_accepted() -> None:
    for level in ("crit", "dbg", "warn", "err", "notice", "critical"):
        assert config_from_dict({"core": {"log_level": level}}).core.log_level == level


@pytest.mark.parametrize(
    ("tm", "key", "rule"),
    [
        ({"retr_timer1": 5000}, "tm.retr_timer1", "must be <= tm.retr_timer2 (4000)"),
        ({"retr_timer1": 800, "retr_timer2": 700}, "tm.retr_timer1", "tm.retr_timer2 (700)"),
        ({"fr_timer": 40000}, "tm.fr_timer", "must be <= tm.max_noninv_lifetime (32000)"),
        ({"max_inv_lifetime": 60000}, "tm.fr_inv_timer", "must be <= tm.max_inv_lifetime"),
    ],
)
def test_timers_that_contradict_each_other(tm: dict[str, int], key: str, rule: str) -> None:
    error = error_of({"tm": tm})
    assert error.key == key
    assert rule in error.rule


def test_equal_retransmission_timers_are_fine() -> None:
    assert (
        config_from_dict({"tm": {"retr_timer1": 1000, "retr_timer2": 1000}}).tm.retr_timer1 == 1000
    )


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        TmConfig(fr_timer=-1)
    assert info.value.key == "tm.fr_timer"
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(TmConfig(), retr_timer2=100)
    assert info.value.key == "tm.retr_timer1"
    with pytest.raises(ConfigError):
        LuaConfig(engine="lua55")


def test_bad_modparams_shapes() -> None:
    error = error_of({"modparams": {"tm": 5}})
    assert (error.key, error.value) == ("modparams.tm", 5)
    error = error_of({"modparams": {"bad-name": {}}})
    assert error.key == "modparams.bad-name"
    error = error_of({"modparams": 1})
    assert error.key == "modparams"


def test_split_hostport() -> None:
    assert split_hostport("sip.example.com") == ("sip.example.com", None)
    assert split_hostport("sip.example.com.:5080") == ("sip.example.com.", 5080)
    assert split_hostport("192.0.2.1:5060") == ("192.0.2.1", 5060)
    assert split_hostport("[2001:db8::1]:5060") == ("2001:db8::1", 5060)
    for bad in ("", ":5060", "2001:db8::1", "host:port", "-a.example", "a.example:99999"):
        with pytest.raises(ValueError):
            split_hostport(bad)


# -------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_set_bool(text: str, expected: bool) -> None:
    config = load_config(None, [f"tm.auto_inv_100={text}"])
    assert config.tm.auto_inv_100 is expected


def test_set_bad_bool() -> None:
    error = override_error("core.loopback_only=maybe")
    assert (error.key, error.value) == ("core.loopback_only", "maybe")
    assert "true/false, 1/0, yes/no, on/off" in error.rule


def test_set_int_and_float() -> None:
    config = load_config(None, ["tm.fr_timer=10000", "core.tcp_idle_timeout=2.5"])
    assert config.tm.fr_timer == 10000
    assert config.core.tcp_idle_timeout == 2.5
    error = override_error("tm.fr_timer=10s")
    assert (error.key, error.value, error.rule) == ("tm.fr_timer", "10s", "expected an integer")
    error = override_error("tm.fr_timer=-5")
    assert (error.key, error.value, error.rule) == ("tm.fr_timer", -5, "must be > 0")
    error = override_error("core.tcp_idle_timeout=soon")
    assert error.rule == "expected a number"


def test_set_tuple_is_comma_separated() -> None:
    config = load_config(None, ["core.aliases=a.example, b.example:5080,,"])
    assert config.core.aliases == ("a.example", "b.example:5080")
    assert load_config(None, ["core.aliases="]).core.aliases == ()
    error = override_error("core.aliases=a.example,-bad")
    assert (error.key, error.value) == ("core.aliases[1]", "-bad")


def test_set_listen() -> None:
    config = load_config(None, ["core.listen=tcp:[::1]:5070,udp:127.0.0.1:5071"])
    assert config.core.listen == (
        ListenSpec("tcp", "::1", 5070),
        ListenSpec("udp", "127.0.0.1", 5071),
    )
    error = override_error("core.listen=udp:127.0.0.1:5060,udp:1.2.3:x")
    assert str(error) == (
        'config error: core.listen[1] = "udp:1.2.3:x": expected PROTO:ADDR:PORT (proto udp|tcp)'
    )


def test_set_optional_string_and_unset_it(tmp_path: Path) -> None:
    config = load_config(None, ["core.advertise=sip.example.com:5060"])
    assert config.core.advertise == "sip.example.com:5060"
    path = write(tmp_path, '[core]\nadvertise = "sip.example.com"\n')
    assert load_config(path, ["core.advertise="]).core.advertise is None


def test_set_modparams() -> None:
    config = load_config(
        None,
        [
            "modparams.usrloc.db_mode=2",
            "modparams.usrloc.db_url=sqlite:///x.db?a=b",
            "modparams.tm.offset=-3",
            "modparams.tm.flag=true",
            "modparams.tm.ratio=1.5",
        ],
    )
    assert config.modparams == {
        "usrloc": {"db_mode": 2, "db_url": "sqlite:///x.db?a=b"},
        "tm": {"offset": -3, "flag": "true", "ratio": "1.5"},
    }
    assert isinstance(config.modparams["usrloc"]["db_mode"], int)


def test_set_modparams_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[modparams.usrloc]\ndb_mode = 1\ndb_url = "x"\n')
    config = load_config(path, ["modparams.usrloc.db_mode=3"])
    assert config.modparams["usrloc"] == {"db_mode": 3, "db_url": "x"}


def test_set_applies_after_the_file_and_last_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "[tm]\nfr_timer = 20000\nwt_timer = 1000\n")
    config = load_config(path, ["tm.fr_timer=10000", "tm.fr_timer=15000"])
    assert (config.tm.fr_timer, config.tm.wt_timer) == (15000, 1000)


def test_overrides_are_checked_together_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[tm]\nretr_timer2 = 1000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["tm.retr_timer1=2000"])
    assert info.value.rule == "must be <= tm.retr_timer2 (1000)"


@pytest.mark.parametrize(
    ("override", "key", "rule"),
    [
        ("tm.fr_timer", "tm.fr_timer", "expected SECTION.KEY=VALUE"),
        ("=5", "=5", "expected SECTION.KEY=VALUE"),
        ("tm=5", "tm", "expected SECTION.KEY=VALUE"),
        ("tm.fr_timer.x=5", "tm.fr_timer.x", "expected SECTION.KEY=VALUE"),
        ("tmm.fr_timer=5", "tmm.fr_timer", "unknown section; did you mean 'tm'?"),
        ("tm.fr_tmer=5", "tm.fr_tmer", "unknown key; did you mean 'fr_timer'?"),
        ("modparams.tm=5", "modparams.tm", "expected modparams.MODULE.PARAM=VALUE"),
        ("modparams.tm.a.b=5", "modparams.tm.a.b", "expected modparams.MODULE.PARAM=VALUE"),
    ],
)
def test_bad_overrides(override: str, key: str, rule: str) -> None:
    error = override_error(override)
    assert error.key == key
    assert error.rule == rule


def test_malformed_override_has_no_value() -> None:
    error = override_error("tm.fr_timer")
    assert error.value is NO_VALUE
    assert str(error) == "config error: tm.fr_timer: expected SECTION.KEY=VALUE"


# ------------------------------------------------------------------ files


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[core]\nlog_level = 'info'\nlisten = [\n  \"udp:127.0.0.1:5060\",\n  oops\n]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.key == path
    assert error.value is NO_VALUE
    assert error.rule.startswith("invalid TOML: ")
    assert "line 5" in error.rule
    assert str(error).startswith(f"config error: {path}: invalid TOML: ")


def test_duplicate_key_is_a_toml_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[tm]\nfr_timer = 1\nfr_timer = 2\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 3"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == path
    assert "cannot read the config file" in info.value.rule


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[core]\nserver_header = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))


def test_errors_in_a_file_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[lua]\nengine = "lua55"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.value) == ("lua.engine", "lua55")


def test_relative_paths_in_a_file_are_relative_to_it(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        '[core]\ndata_dir = "state"\n[lua]\nroutes = "routes/main.lua"\n'
        'path = ["lib", "/abs/lib"]\n',
    )
    config = load_config(path)
    assert config.core.data_dir == os.path.join(str(conf_dir), "state")
    assert config.lua.routes == os.path.join(str(conf_dir), "routes", "main.lua")
    assert config.lua.path == (os.path.join(str(conf_dir), "lib"), "/abs/lib")


def test_relative_paths_on_the_command_line_stay_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[lua]\nroutes = "in-file.lua"\n')
    config = load_config(path, ["lua.routes=routes/cli.lua", "core.data_dir=here"])
    assert config.lua.routes == "routes/cli.lua"
    assert config.core.data_dir == "here"


def test_load_config_accepts_a_path_object(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[tm]\nt4 = 1000\n")
    config = load_config(path)
    assert config.tm.t4 == 1000
    assert config.source == str(path)


# ----------------------------------------------------------- the example


def test_example_file_gives_the_defaults() -> None:
    config = load_config(str(EXAMPLE))
    assert dataclasses.replace(config, source=None) == Config()


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in (CoreConfig, LuaConfig, TmConfig):
        assert f"[{section.SECTION}]" in text
        for f in dataclasses.fields(section):
            # Set, or commented out with an example value.
            assert re.search(rf"^#? ?{f.name} = ", text, re.MULTILINE), f.name
    assert "[modparams." in text
