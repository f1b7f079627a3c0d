"""Tests of the ``trio-sip`` command line and of the logging it sets up.

The server functions are replaced by a stand-in module in ``sys.modules``, so no
server is ever started here.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_sip
import trio_sip.cli
from trio_sip import log
from trio_sip.cli import main
from trio_sip.config import Config, ConfigError, ListenSpec


class FakeServer:
    """Stands in for trio_sip.runtime.server and records what it was given."""

    def __init__(self) -> None:
        self.module = types.ModuleType("trio_sip.runtime.server")
        self.module.run = self.run  # type: ignore[attr-defined]
        self.module.check = self.check  # type: ignore[attr-defined]
        self.configs: list[tuple[str, Config]] = []
        self.run_result = 0
        self.run_raises: BaseException | None = None
        self.problems: list[str] = []

    def run(self, config: Config) -> int:
        self.configs.append(("run", config))
        if self.run_raises is not None:
            raise self.run_raises
        return self.run_result

    def check(self, config: Config) -> list[str]:
        self.configs.append(("check", config))
        return list(self.problems)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setitem(sys.modules, "trio_sip.runtime.server", fake.module)
    return fake


@pytest.fixture
def log_levels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record setup_logging calls instead of reconfiguring the root logger."""
    levels: list[str] = []

    def fake_setup(level: str, stream: object = None) -> None:
        levels.append(level)

    monkeypatch.setattr(trio_sip.cli, "setup_logging", fake_setup)
    return levels


# ------------------------------------------------------------------ basics


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"trio-sip {trio_sip.__version__}\n"


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_sip", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"trio-sip {trio_sip.__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: trio-sip" in err
    assert "a command is required" in err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--config", "--listen", "--routes", "--set", "--log-level"):
        assert option in out


# ------------------------------------------------------------------- run


def test_run_with_defaults(server: FakeServer, log_levels: list[str]) -> None:
    assert main(["run"]) == 0
    assert server.configs == [("run", Config())]
    assert log_levels == ["info"]


def test_run_returns_the_servers_status(server: FakeServer, log_levels: list[str]) -> None:
    server.run_result = 1
    assert main(["run"]) == 1


def test_run_options_become_overrides(
    server: FakeServer, log_levels: list[str], tmp_path: Path
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[core]\nlog_level = "error"\n[tm]\nfr_timer = 20000\n')
    status = main(
        [
            "run",
            "--config",
            str(conf),
            "--listen",
            "udp:127.0.0.1:5070",
            "-l",
            "tcp:[::1]:5071",
            "--routes",
            "my/routes.lua",
            "--set",
            "tm.fr_timer=10000",
            "--set",
            "modparams.usrloc.db_mode=2",
            "--set",
            "core.log_level=warning",
            "--log-level",
            "debug",
        ]
    )
    assert status == 0
    [(command, config)] = server.configs
    assert command == "run"
    assert config.source == str(conf)
    assert config.core.listen == (
        ListenSpec("udp", "127.0.0.1", 5070),
        ListenSpec("tcp", "::1", 5071),
    )
    assert config.lua.routes == "my/routes.lua"
    assert config.tm.fr_timer == 10000
    assert config.modparams == {"usrloc": {"db_mode": 2}}
    # --log-level wins over --set core.log_level, which wins over the file.
    assert config.core.log_level == "debug"
    assert log_levels == ["debug"]


def test_config_error_exits_2_with_the_message(
    server: FakeServer, log_levels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--listen", "udp:1.2.3:x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        'trio-sip: config error: core.listen[0] = "udp:1.2.3:x":'
        " expected PROTO:ADDR:PORT (proto udp|tcp)\n"
    )
    assert server.configs == []
    assert log_levels == []


def test_bad_log_level_exits_2(
    server: FakeServer, log_levels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--log-level", "verbose"]) == 2
    assert capsys.readouterr().err.startswith(
        'trio-sip: config error: core.log_level = "verbose": expected one of debug|info'
    )
    assert server.configs == []


def test_bad_set_exits_2(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--set", "tm.fr_timer"]) == 2
    assert capsys.readouterr().err == (
        "trio-sip: config error: tm.fr_timer: expected SECTION.KEY=VALUE\n"
    )
    assert server.configs == []


def test_missing_config_file_exits_2(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "missing.toml")
    assert main(["run", "--config", path]) == 2
    assert capsys.readouterr().err.startswith(f"trio-sip: config error: {path}: cannot read")
    assert server.configs == []


def test_toml_syntax_error_exits_2(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("[core\n")
    assert main(["check", "-c", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trio-sip: config error: {conf}: invalid TOML: ")
    assert "line 1" in err


def test_config_error_from_the_server_exits_2(
    server: FakeServer, log_levels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    server.run_raises = ConfigError("modparams.usrloc.db_mode", 7, "must be 0..3")
    assert main(["run"]) == 2
    assert capsys.readouterr().err == (
        "trio-sip: config error: modparams.usrloc.db_mode = 7: must be 0..3\n"
    )


def test_ctrl_c_exits_130(server: FakeServer, log_levels: list[str]) -> None:
    server.run_raises = KeyboardInterrupt()
    assert main(["run"]) == 130


# ----------------------------------------------------------------- check


def test_check_ok(
    server: FakeServer, log_levels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--routes", "r.lua"]) == 0
    assert capsys.readouterr().out == "ok: r.lua\n"
    assert [command for command, _ in server.configs] == ["check"]


def test_check_problems_exit_1(
    server: FakeServer, log_levels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    server.problems = ["r.lua:3: unknown function KSR.tm.t_rely", "r.lua:9: wrong route type"]
    assert main(["check", "--routes", "r.lua"]) == 1
    out = capsys.readouterr().out
    assert out == "r.lua:3: unknown function KSR.tm.t_rely\nr.lua:9: wrong route type\n"


def test_ctl_passes_its_options_to_run_ctl(monkeypatch: pytest.MonkeyPatch) -> None:
    import trio_sip.mi.client

    calls: list[tuple[object, ...]] = []

    def fake_run_ctl(method: str | None, params: list[str], **kw: object) -> int:
        calls.append((method, params, kw["as_json"], kw["url"], kw["raw_params"]))
        return 7

    monkeypatch.setattr(trio_sip.mi.client, "run_ctl", fake_run_ctl)
    assert main(["ctl", "--json", "--url", "http://127.0.0.1:9/", "cfg.get", "tm"]) == 7
    assert main(["ctl", "--params", "[1]", "tm.list"]) == 7
    assert calls == [("cfg.get", ["tm"], True, "http://127.0.0.1:9/", None),
                     ("tm.list", [], False, None, "[1]")]


def test_check_takes_the_same_options(server: FakeServer, log_levels: list[str]) -> None:
    assert main(["check", "--listen", "tcp:127.0.0.1:6000", "--log-level", "notice"]) == 0
    [(_, config)] = server.configs
    assert config.core.listen == (ListenSpec("tcp", "127.0.0.1", 6000),)
    assert log_levels == ["notice"]


# ---------------------------------------------------------------- logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """Restore the root logger after a test that calls setup_logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>\S+) +(?P<logger>\S+) (?P<rest>.*)"
)


def test_log_line_format(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("info", stream)
    logging.getLogger("trio_sip.proxy").info("relayed %s to %s", "INVITE", "bob")
    line = stream.getvalue()
    match = LINE.fullmatch(line.rstrip("\n"))
    assert match is not None, line
    assert (match["level"], match["logger"], match["rest"]) == (
        "INFO",
        "trio_sip.proxy",
        "relayed INVITE to bob",
    )
    assert line.split(" ")[1:3] == ["INFO", ""]  # "INFO  trio_sip.proxy"


def test_call_id_is_added_while_set(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("debug", stream)
    logger = logging.getLogger("trio_sip.proxy")
    with log.call_id_context("a84b4c76e66710"):
        logger.debug("in the call")
    logger.debug("outside")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(" trio_sip.proxy [a84b4c76e66710] in the call")
    assert second.endswith(" trio_sip.proxy outside")
    assert log.current_call_id.get() is None


def test_script_lines_carry_their_location(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("notice", stream)
    with log.call_id_context("c1"):
        log.log_script(log.NOTICE, "100% routed", "routes/default.lua:42")
    log.log_script(logging.INFO, "not shown", "routes/default.lua:43")
    assert stream.getvalue().endswith(
        " NOTICE trio_sip.script [c1] routes/default.lua:42: 100% routed\n"
    )
    assert "not shown" not in stream.getvalue()


def test_level_filtering_and_crit(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("crit", stream)
    logger = logging.getLogger("trio_sip.test")
    logger.error("dropped")
    logger.critical("kept")
    assert "dropped" not in stream.getvalue()
    assert " CRITICAL trio_sip.test kept" in stream.getvalue()
    assert not logger.isEnabledFor(logging.ERROR)


def test_line_breaks_cannot_forge_a_record(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("info", stream)
    forged = "2026-01-01T00:00:00.000Z ERROR trio_sip.proxy forged"
    logging.getLogger("trio_sip.sip").info("bad header %r", "x")
    logging.getLogger("trio_sip.sip").info("header: a\r\n%s", forged)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].endswith("header: a\\r")
    assert lines[2] == "    " + forged


def test_setup_logging_twice_keeps_one_handler(root_logger: logging.Logger) -> None:
    before = len(root_logger.handlers)
    first, second = io.StringIO(), io.StringIO()
    log.setup_logging("info", first)
    log.setup_logging("info", second)
    assert len(root_logger.handlers) == before + 1
    logging.getLogger("trio_sip").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_exceptions_are_logged_with_traceback(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup_logging("info", stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("trio_sip.runtime").exception("route failed")
    text = stream.getvalue()
    assert " ERROR trio_sip.runtime route failed\nTraceback" in text
    assert "ValueError: boom" in text


def test_level_names() -> None:
    assert log.level_from_name("NOTICE") == 25 == log.NOTICE
    assert logging.getLevelName(log.NOTICE) == "NOTICE"
    assert log.level_from_name("crit") == logging.CRITICAL
    assert log.level_from_name("dbg") == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        log.level_from_name("verbose")
