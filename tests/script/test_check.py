"""Static checks of Lua routes (script/check.py): the tokenizer, each check, and how
``trio-sip check`` and the server start use them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import trio_sip.cli
from trio_sip.cli import main
from trio_sip.config import config_from_dict
from trio_sip.modules import builtin_modules
from trio_sip.runtime.server import build_engine
from trio_sip.runtime.server import check as server_check
from trio_sip.script.check import (
    LuaSyntaxError,
    Problem,
    RouteCheckError,
    check_routes,
    format_problem,
    parse,
    tokenize,
)
from trio_sip.script.engine import ScriptError, packaged_routes_dir

REPO = Path(__file__).resolve().parents[2]
MODULES = builtin_modules()


def problems(write_routes: Any, source: str, **kw: Any) -> list[Problem]:
    return check_routes(write_routes(source), MODULES, **kw)


def errors(write_routes: Any, source: str, **kw: Any) -> list[Problem]:
    return [p for p in problems(write_routes, source, **kw) if p.severity == "error"]


def warnings(write_routes: Any, source: str, **kw: Any) -> list[Problem]:
    return [p for p in problems(write_routes, source, **kw) if p.severity == "warning"]


def route(body: str, extra: str = "") -> str:
    """A routes file whose request route is ``body``."""
    return f"function ksr_request_route()\n{body}\nend\n{extra}"


# -- the tokenizer ----------------------------------------------------------------------


def test_tokens_long_strings_comments_escapes_and_numbers() -> None:
    src = (
        "--[==[ a long comment with ]] and KSR.no.such() inside\n]==]\n"
        "local a = [[\nfirst line skipped]]  -- line comment KSR.x()\n"
        "local b = [=[ ]] ]=] local c = 'it\\'s \\x41\\65\\u{48}\\z\n   end'\n"
        "local d = 0xff + 0x1p4 + 3.5e-1 + .5 + 7 + 1ULL\n"
    )
    toks = tokenize(src)
    strings = [t.text for t in toks if t.kind == "string"]
    assert strings == ["first line skipped", " ]] ", "it's AAHend"]
    numbers = [(t.text, t.value) for t in toks if t.kind == "number"]
    assert numbers == [("0xff", 255), ("0x1p4", 16.0), ("3.5e-1", 0.35), (".5", 0.5),
                       ("7", 7), ("1ULL", 1)]
    assert not any(t.kind == "name" and t.text == "KSR" for t in toks)
    d = next(t for t in toks if t.text == "d")
    assert (d.line, d.col) == (7, 7)
    assert toks[-1].kind == "eof"


def test_line_numbers_follow_every_newline_style() -> None:
    toks = tokenize("a\r\nb\n\rc\rd\n[[x\r\ny]] e")
    lines = {t.text: t.line for t in toks if t.kind in ("name", "string")}
    assert lines == {"a": 1, "b": 2, "c": 3, "d": 4, "x\ny": 5, "e": 6}


@pytest.mark.parametrize("src", ["x = 'abc", "x = [[abc", "--[==[ abc ]]", "x = 1 @ 2",
                                 "x = = 1", "function f( end", "if x then"])
def test_broken_source_is_a_syntax_error(src: str) -> None:
    with pytest.raises(LuaSyntaxError):
        parse(src)


def test_the_whole_grammar_parses() -> None:
    parse(
        "#!/usr/bin/lua\n"
        "local t <const> = {1, 2; x = 3, ['y'] = function(...) return ... end}\n"
        "local a, b = 1 // 2, ~3 & 4 | 5 << 1 >> 2 ~ 6\n"
        "for i = 1, 10, 2 do if i == 2 then break elseif i then goto done end end\n"
        "for k, v in pairs(t) do repeat local z = k until z end\n"
        "while false do end do end ::done::\n"
        "function t.m:f(x) return self, x end\n"
        "print 'x' print {1} t.m:f(2)(3)[4] = (5)\n"
        "return not a and -b .. 'x' ^ 2 or #t\n"
    )


def test_calls_in_strings_and_comments_are_ignored(write_routes: Any) -> None:
    src = route(
        '  local s = "KSR.sl.nope()" .. [[ KSR.nope.nope() ]] .. [==[\n'
        "  KSR.tm.t_relay() ]] ]==]\n"
        "  --[[ KSR.sl.sl_send_reply() with no args\n  ]] KSR.sl.sl_send_reply(200, s)\n"
        "  -- KSR.sl.sl_send_reply()"
    )
    assert problems(write_routes, src) == []


# -- check 1: unknown modules and functions ------------------------------------------------


def test_unknown_module_and_function(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.sl.sl_send_rply(404, 'x')\n"
        "  KSR.nosuch.f()\n"
        "  local f = KSR.tm.t_relayy\n"
        "  KSR.forwardd()"
    ))
    assert [(p.line, p.column, p.check) for p in found] == [
        (2, 3, "unknown"), (3, 3, "unknown"), (4, 13, "unknown"), (5, 3, "unknown")]
    assert found[0].message == ("unknown function KSR.sl.sl_send_rply "
                                "(did you mean KSR.sl.sl_send_reply?)")
    assert found[1].message.startswith("unknown module or function KSR.nosuch")
    assert "KSR.forward?" in found[3].message


def test_ksr_shadowed_by_a_local_is_not_checked(write_routes: Any) -> None:
    assert errors(write_routes, route("  local KSR = {}\n  KSR.nope.f()")) == []


# -- check 2: argument counts -------------------------------------------------------------


def test_argument_counts(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.sl.sl_send_reply(404)\n"
        "  KSR.sl.sl_send_reply(404, 'x', 'y')\n"
        "  KSR.tm.t_set_fr(1000)\n"  # one optional argument
        "  KSR.tm.t_set_fr(1000, 2000)\n"
        "  KSR.sl.sl_send_reply(unpack({404, 'x'}))\n"  # any number of values: unknown
        "  KSR.tm.t_relay(1, unpack({}))\n"  # at least one: too many
        "  KSR.sl:sl_send_reply(404, 'x')"
    ))
    assert [(p.line, p.check) for p in found] == [
        (2, "arity"), (3, "arity"), (7, "arity"), (8, "arity"), (8, "type")]
    assert found[0].message == "KSR.sl.sl_send_reply() takes 2 argument(s), got 1"
    assert found[2].message == "KSR.tm.t_relay() takes 0 argument(s), got at least 1"
    assert "':' passes KSR's table" in found[3].message


# -- check 3: constant argument types ------------------------------------------------------


def test_constant_argument_types_follow_the_engine_conversions(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.sl.sl_send_reply('404', 500)\n"  # numeric string for int, number for str
        "  KSR.sl.sl_send_reply(-1, 'x' .. 'y')\n"
        "  KSR.sl.sl_send_reply('abc', 'x')\n"
        "  KSR.sl.sl_send_reply(4.5, true)\n"
        "  KSR.sl.sl_send_reply(nil, {})\n"
        "  KSR.tm.t_set_fr(1000, nil)\n"  # nil for an optional parameter
        "  KSR.sl.sl_send_reply(x, y)"  # expressions: not known
    ))
    assert [(p.line, p.column) for p in found] == [(4, 24), (5, 24), (5, 29), (6, 24),
                                                   (6, 29)]
    assert {p.check for p in found} == {"type"}
    assert found[0].message == ("KSR.sl.sl_send_reply(): argument 1 must be an integer, "
                                "got the string 'abc'")
    assert found[1].message.endswith("must be an integer, got 4.5")
    assert found[2].message.endswith("argument 2 must be a string, got a boolean")
    assert found[3].message.endswith("argument 1 must be an integer, got nil")
    assert found[4].message.endswith("argument 2 must be a string, got a table")


def test_lua_exports_mismatches_are_warnings(write_routes: Any) -> None:
    # Lua-implemented exports are called directly, unchecked: not an error at run time
    found = problems(write_routes, route("  KSR.info('a', 'b')\n  KSR.x.exit(1)"))
    assert [(p.line, p.severity, p.check) for p in found] == [(2, "warning", "arity")]


# -- check 4: functions armed by name ---------------------------------------------------------


def test_armed_functions_must_exist(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.tm.t_on_failure('ksr_failure')\n"
        "  KSR.tm.t_on_branch('nope_branch')\n"
        "  KSR.tm.t_on_reply('nope_reply')\n"
        "  KSR.tm.t_on_branch_failure('nope_bf')\n"
        "  KSR.async.route('nope_async', 1)\n"
        "  KSR.async.launch('ksr_failure', 'nope_report')\n"
        "  KSR.async.launch('ksr_failure', '')\n"
        "  KSR.tm.t_on_failure(name_in_a_variable)\n"
        "  KSR.tm.t_relay()",
        "function ksr_failure() end\n"
        "local function local_only() end\n",
    ))
    assert [(p.line, p.check) for p in found] == [(3, "missing"), (4, "missing"),
                                                  (5, "missing"), (6, "missing"),
                                                  (7, "missing")]
    assert found[0].message == "KSR.tm.t_on_branch() arms nope_branch(), which is not defined"
    assert found[0].column == 22


def test_continuations_named_by_string_must_exist(write_routes: Any) -> None:
    # t_continue and the async routes name the function the route goes on in
    found = errors(write_routes, route(
        "  KSR.tmx.t_continue(1, 2, 'nope_resume')\n"
        "  KSR.async.ms_route('nope_ms', 100)\n"
        "  KSR.async.task_route('nope_task')\n"
        "  KSR.tmx.t_continue(1, 2, 'ksr_resume')",
        "function ksr_resume() end\n",
    ))
    assert [(p.line, p.check) for p in found] == [(2, "missing"), (3, "missing"),
                                                  (4, "missing")]
    assert found[0].message == ("KSR.tmx.t_continue() arms nope_resume(), "
                                "which is not defined")


def test_a_local_function_cannot_be_armed(write_routes: Any) -> None:
    found = errors(write_routes, "local function ksr_failure() end\n" + route(
        "  KSR.tm.t_on_failure('ksr_failure')"))
    assert [p.check for p in found] == ["missing"]


def test_entry_points(write_routes: Any) -> None:
    found = errors(write_routes, "function other() end\n")
    assert [(p.line, p.column, p.message) for p in found] == [
        (1, 1, "no function ksr_request_route() (the request route entry point)")]
    # the reply route is optional; the names come from the config
    assert errors(write_routes, "function my_route() other() end\nfunction other() end\n",
                  request_route="my_route") == []


def test_dynamic_definitions_turn_missing_names_into_warnings(write_routes: Any) -> None:
    found = problems(write_routes, route(
        "  KSR.tm.t_on_failure('made_later')",
        "loadstring('function made_later() end')()\n"))
    assert [(p.severity, p.check) for p in found] == [("warning", "missing")]
    assert "may be defined dynamically (loadstring is used at " in found[0].message


# -- check 5: route types ----------------------------------------------------------------------


TWO_LEVELS = """
function ksr_request_route()
  KSR.tm.t_on_branch("ksr_branch")
  KSR.tm.t_on_failure("ksr_failure")
  relay_helper()
  KSR.tm.t_relay()
end
function ksr_branch()
  branch_helper()
end
function branch_helper()
  relay_helper()
end
function relay_helper()
  KSR.tm.t_relay()
end
function ksr_failure()
  relay_helper()
end
"""


def test_route_type_violation_through_two_levels_of_calls(write_routes: Any) -> None:
    path = write_routes(TWO_LEVELS)
    found = [p for p in check_routes(path, MODULES) if p.severity == "error"]
    assert [(p.line, p.column, p.check) for p in found] == [(15, 3, "route")]
    assert found[0].message == (
        f"ksr_branch (branch_route, armed at {path}:3 by KSR.tm.t_on_branch) -> "
        f"branch_helper ({path}:9) -> relay_helper ({path}:12) calls KSR.tm.t_relay(), "
        "which is not allowed in branch_route (allowed in request_route|failure_route|"
        "event_route)"
    )


def test_no_false_positive_when_a_helper_is_called_from_allowed_routes(
        write_routes: Any) -> None:
    src = TWO_LEVELS.replace("  branch_helper()\n", "  KSR.info('branch')\n", 1)
    assert errors(write_routes, src) == []


def test_entry_points_and_async_routes_have_their_route_types(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.async.route('later', 1)",
        "function later() KSR.tm.t_relay() KSR.rr.loose_route() end\n"
        "function ksr_reply_route() KSR.sl.sl_send_reply(500, 'x') end\n"
        "function launched() KSR.rr.loose_route() end\n"
        "function start() KSR.async.launch('launched') end\n",
    ))
    # later() runs in the request route, as its caller (Kamailio async.route)
    assert [(p.line, p.check) for p in found] == [(5, "route"), (6, "route")]
    assert "reply_route entry point" in found[0].message
    assert found[1].message.startswith("launched (event_route, armed at ")


def test_waiting_in_a_route_that_cannot_wait(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.async.sleep(1)",
        "function ksr_reply_route() KSR.async.ms_sleep(5) end\n"))
    assert [(p.line, p.check) for p in found] == [(4, "wait")]
    assert found[0].message.endswith(
        "calls KSR.async.ms_sleep(), which waits: a reply_route cannot wait")


def test_route_type_guards_narrow_what_runs(write_routes: Any) -> None:
    src = route(
        "  KSR.tm.t_on_reply('ksr_onreply')",
        "function ksr_onreply() helper() end\n"
        "function helper()\n"
        "  if KSR.siputils.is_request() > 0 then KSR.rr.record_route() end\n"
        "  if KSR.tmx.t_is_request_route() < 0 then return end\n"
        "  KSR.rr.loose_route()\n"
        "  if not (KSR.tmx.t_is_reply_route() > 0) then KSR.sl.sl_send_reply(1, 'x') end\n"
        "  local ok = KSR.tmx.t_is_branch_route() > 0 and KSR.tm.t_drop_replies_all() > 0\n"
        "end\n",
    )
    assert errors(write_routes, src) == []
    # without the guards both calls are errors
    unguarded = src.replace("KSR.siputils.is_request() > 0", "x").replace(
        "KSR.tmx.t_is_request_route() < 0", "x")
    assert [p.line for p in errors(write_routes, unguarded)] == [6, 8]


def test_dynamic_and_shadowed_calls_are_not_followed(write_routes: Any) -> None:
    src = route(
        "  KSR.tm.t_on_branch('ksr_branch')",
        "function ksr_branch(relay_helper)\n"
        "  relay_helper()\n"  # the parameter, not the global
        "  _G['relay' .. '_helper']()\n"  # a computed name (folded: followed)
        "  _G[name]()\n"  # dynamic: ignored
        "  local t = {f = relay_helper} t.f()\n"
        "end\n"
        "function relay_helper() KSR.tm.t_relay() end\n",
    )
    found = errors(write_routes, src)
    assert [p.line for p in found] == [10]  # only through the _G['...'] call
    assert "ksr_branch (branch_route" in found[0].message


def test_local_functions_and_pcall_are_followed(write_routes: Any) -> None:
    found = errors(write_routes, route(
        "  KSR.tm.t_on_branch('ksr_branch')",
        "local function relay() KSR.tm.t_relay() end\n"
        "function ksr_branch()\n"
        "  relay()\n"
        "  pcall(function() KSR.rr.loose_route() end)\n"
        "end\n",
    ))
    assert [p.line for p in found] == [4, 7]
    assert "relay (" in found[0].message and "<function at " in found[1].message


def test_a_global_defined_twice_is_not_followed(write_routes: Any) -> None:
    found = problems(write_routes, route(
        "  KSR.tm.t_on_branch('ksr_branch')",
        "function ksr_branch() helper() end\n"
        "function helper() KSR.tm.t_relay() end\n"
        "function helper() end\n",
    ))
    assert [(p.line, p.severity, p.check) for p in found] == [(6, "warning", "redefined")]


def test_required_lua_files_are_checked_too(write_routes: Any, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mylib.lua").write_text("function lib_branch()\n  KSR.tm.t_relay()\nend\n")
    src = route("  KSR.tm.t_on_branch('lib_branch')", "require 'mylib'\n")
    found = problems(write_routes, src, lua_path=[str(lib)])
    assert [(Path(p.file).name, p.line, p.check) for p in found] == [("mylib.lua", 2, "route")]
    # a module that cannot be found may define anything: missing names are warnings
    found = problems(write_routes, src.replace("mylib", "elsewhere"))
    assert [(p.severity, p.check) for p in found] == [("warning", "missing")]
    assert "require('elsewhere') is not a file of the Lua path" in found[0].message


# -- warnings ----------------------------------------------------------------------------------


def test_dynamic_pv_names_are_warned(write_routes: Any) -> None:
    found = problems(write_routes, route(
        "  local x = KSR.pv.get('$fU')\n"
        "  KSR.pv.sets('$var(' .. x .. ')', 'v')\n"
        "  KSR.pv.get('$var(' .. 'fixed' .. ')')"  # constant once folded
    ))
    assert [(p.line, p.column, p.severity, p.check) for p in found] == [
        (3, 15, "warning", "pv-name")]


def test_unused_and_undefined_functions_are_warned(write_routes: Any) -> None:
    found = problems(write_routes, route("  helpr()", "function helper() end\n"))
    assert [(p.line, p.severity, p.check) for p in found] == [
        (2, "warning", "undefined"), (4, "warning", "unused")]


def test_format_problem() -> None:
    p = Problem("routes/x.lua", 12, 5, "something", "warning")
    assert format_problem(p) == "routes/x.lua:12:5: warning: something"


# -- the shipped routes --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "routes").glob("*.lua"))
                         + sorted(packaged_routes_dir().glob("*.lua")), ids=str)
def test_shipped_routes_are_clean(path: Path) -> None:
    assert check_routes(str(path), MODULES) == []


def test_a_syntax_error_is_reported_with_its_position(write_routes: Any) -> None:
    found = problems(write_routes, "function ksr_request_route()\n  x = = 1\nend\n")
    assert [(p.line, p.column, p.check) for p in found] == [(2, 7, "syntax")]


# -- trio-sip check and the server start ---------------------------------------------------------


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the CLI from reconfiguring the root logger."""
    monkeypatch.setattr(trio_sip.cli, "setup_logging", lambda *a, **k: None)


@pytest.mark.usefixtures("quiet_cli")
def test_cli_check_exit_codes(write_routes: Any, capsys: pytest.CaptureFixture[str],
                              caplog: pytest.LogCaptureFixture) -> None:
    clean = write_routes(route("  KSR.sl.sl_send_reply(200, 'OK')", "function spare() end\n"),
                         "clean.lua")
    assert main(["check", "--routes", clean]) == 0
    assert capsys.readouterr().out == f"ok: {clean}\n"
    # warnings are logged and do not fail the check
    assert any("function spare() is never called" in r.getMessage() for r in caplog.records)

    bad = write_routes(TWO_LEVELS + "function x() KSR.sl.nope() end\n", "bad.lua")
    assert main(["check", "--routes", bad]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:15:3: error: ksr_branch (branch_route, armed at {bad}:3 by "
        f"KSR.tm.t_on_branch) -> branch_helper ({bad}:9) -> relay_helper ({bad}:12) calls "
        "KSR.tm.t_relay(), which is not allowed in branch_route (allowed in "
        "request_route|failure_route|event_route)",
        f"{bad}:20:14: error: unknown function KSR.sl.nope",
    ]


@pytest.mark.usefixtures("quiet_cli")
def test_cli_check_reports_lua_load_errors(write_routes: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    broken = write_routes("function ksr_request_route(\n", "broken.lua")
    assert main(["check", "--routes", broken]) == 1
    assert f"{broken}:" in capsys.readouterr().out


def test_server_refuses_to_start_with_errors(write_routes: Any) -> None:
    path = write_routes(route("  KSR.sl.sl_send_reply('abc', 'x')\n  KSR.sl.nope()"))
    config = config_from_dict({"lua": {"routes": path}})
    with pytest.raises(ScriptError) as info:
        build_engine(config)
    assert isinstance(info.value, RouteCheckError)
    assert [p.line for p in info.value.problems] == [2, 3]
    text = str(info.value)
    assert f"{path}:2:24: error: KSR.sl.sl_send_reply(): argument 1" in text
    assert f"{path}:3:3: error: unknown function KSR.sl.nope" in text
    assert server_check(config) == [format_problem(p) for p in info.value.problems]


def test_server_starts_when_only_the_checker_cannot_parse(
        write_routes: Any, caplog: pytest.LogCaptureFixture) -> None:
    # valid Lua 5.1 (goto is a name there), which the checker's 5.2+ grammar refuses:
    # Lua accepted the file, so the checks are skipped with a warning, not an error
    path = write_routes(route("  local goto = 200\n  KSR.sl.sl_send_reply(goto, 'OK')"))
    caplog.set_level(logging.WARNING, logger="trio_sip")
    build_engine(config_from_dict({"lua": {"routes": path, "engine": "lua51"}}))
    assert any("static route checks skipped" in r.getMessage() for r in caplog.records)


def test_server_starts_with_warnings_only(write_routes: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = write_routes(route("  KSR.pv.sets('$var(' .. KSR.pv.get('$fU') .. ')', 'x')"))
    caplog.set_level(logging.WARNING, logger="trio_sip")
    engine = build_engine(config_from_dict({"lua": {"routes": path}}))
    assert engine.function("ksr_request_route") is not None
    assert any("the PV name is built at run time" in r.getMessage() for r in caplog.records)
