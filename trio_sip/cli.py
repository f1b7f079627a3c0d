"""The ``trio-sip`` command: ``run`` the server, ``check`` a config and its routes,
``ctl`` a running server (its management interface, trio_sip/mi/client.py).

Exit codes follow the usual shell conventions, so scripts and service managers
can tell the failures apart:

* 0: done (``check`` found nothing; ``run`` stopped cleanly);
* 1: ``check`` found problems in the routes (or ``run`` failed, as it reports);
* 2: usage or configuration error: nothing was started. A systemd unit with
  ``RestartPreventExitStatus=2`` then does not restart-loop on a bad config;
* 130: interrupted by Ctrl-C.

``ctl`` has its own: 0 success, 1 the server answered a JSON-RPC error, 2 usage,
connection or HTTP errors.

Command-line options are turned into ``--set`` overrides and applied after the
config file, in this order: every ``--set`` as given, then ``--listen``,
``--routes`` and ``--log-level``; so the dedicated options win over a ``--set``
of the same key, and one code path (:func:`trio_sip.config.load_config`) parses
and checks every value whatever its origin.

The server itself (``trio_sip.runtime.server``) is imported only by the
commands that need it: ``--version`` and usage errors stay fast and do not
depend on the runtime importing cleanly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Final

from trio_sip import __version__
from trio_sip.config import Config, ConfigError, load_config
from trio_sip.log import CANONICAL_LEVELS, setup_logging

__all__ = ["EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PROBLEMS", "main"]

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130

_PROG: Final = "trio-sip"


def _server() -> ModuleType:
    # Looked up in sys.modules at each call (not bound at import) so that tests
    # can put a stand-in module there and no server is ever started by them.
    return importlib.import_module("trio_sip.runtime.server")


def _cmd_run(config: Config) -> int:
    setup_logging(config.core.log_level)
    run: Callable[[Config], int] = _server().run
    try:
        return run(config)
    except KeyboardInterrupt:
        # trio.run re-raises Ctrl-C after cancelling everything; by then the
        # server has shut down, so this is a normal, if abrupt, stop.
        return EXIT_INTERRUPTED


def _cmd_run_workers(config: Config, path: str | None, overrides: list[str]) -> int:
    """``run`` with core.workers > 1: a supervisor of N worker processes
    (trio_sip/runtime/workers.py), each loading the config from the same file and
    overrides."""
    setup_logging(config.core.log_level)
    from trio_sip.runtime.workers import run_workers

    try:
        return run_workers(config, path, overrides)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _cmd_check(config: Config) -> int:
    setup_logging(config.core.log_level)
    check: Callable[[Config], list[str]] = _server().check
    problems = check(config)
    for problem in problems:
        print(problem)
    if problems:
        return EXIT_PROBLEMS
    print(f"ok: {config.lua.routes}")
    return EXIT_OK


_COMMANDS: Final[dict[str, Callable[[Config], int]]] = {
    "run": _cmd_run,
    "check": _cmd_check,
}


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="TOML config file (default: built-in defaults)",
    )
    common.add_argument(
        "--listen",
        "-l",
        action="append",
        default=[],
        metavar="PROTO:ADDR:PORT",
        help="address to bind, e.g. udp:127.0.0.1:5060 or tcp:[::1]:5060;"
        " repeatable; replaces core.listen",
    )
    common.add_argument("--routes", metavar="FILE", help="Lua routes file; sets lua.routes")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key after the file is read; repeatable",
    )
    common.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"{'|'.join(CANONICAL_LEVELS)}; sets core.log_level",
    )

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="A SIP proxy on Trio, routed by Lua scripts with Kamailio's KEMI API.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", parents=[common], help="run the server", description="Run the server."
    )
    run.add_argument(
        "--workers",
        metavar="N",
        help="run N server processes sharing the listen addresses (SO_REUSEPORT;"
        " docs/workers.md); sets core.workers",
    )
    commands.add_parser(
        "check",
        parents=[common],
        help="check the config and the routes, then exit",
        description="Load the config and the routes, report problems, and exit"
        " (1 if there are problems).",
    )
    ctl = commands.add_parser(
        "ctl",
        help="call a management command of a running server",
        description="Call a management command (JSON-RPC over HTTP) of a running server"
        " and print its result readably (--json: as JSON). Exit status: 0 success, 1 JSON-RPC error,"
        " 2 usage or connection error.",
    )
    ctl.add_argument("--url", metavar="URL",
                     help="the management interface (default: $TRIO_SIP_MI_URL, else"
                     " mi.listen of --config, else http://127.0.0.1:8090/)")
    ctl.add_argument("--token", metavar="TOKEN",
                     help="bearer token (default: $TRIO_SIP_MI_TOKEN, else mi.token of --config)")
    ctl.add_argument("--config", "-c", metavar="FILE",
                     help="read mi.listen and mi.token from this config file")
    ctl.add_argument("--params", dest="raw_params", metavar="JSON",
                     help="the params as one JSON array or object")
    ctl.add_argument("--timeout", type=float, default=40.0, metavar="SECONDS",
                     help="give up after this long (default 40)")
    ctl.add_argument("--json", dest="as_json", action="store_true",
                     help="print the result as JSON (default: readable key: value lines"
                     " and tables)")
    ctl.add_argument("--list", dest="list_methods", action="store_true",
                     help="list the commands the server has")
    ctl.add_argument("method", nargs="?", metavar="METHOD",
                     help="e.g. tm.stats, core.uptime, app_lua.reload")
    ctl.add_argument("params", nargs="*", metavar="PARAM",
                     help="positional params: JSON values, or strings (s:TEXT forces a string)")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides: list[str] = list(args.overrides)
    if args.listen:
        overrides.append("core.listen=" + ",".join(args.listen))
    if args.routes is not None:
        overrides.append(f"lua.routes={args.routes}")
    if args.log_level is not None:
        overrides.append(f"core.log_level={args.log_level}")
    if getattr(args, "workers", None) is not None:
        overrides.append(f"core.workers={args.workers}")
    return overrides


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-sip`` command line with *argv* (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so tests can call it; argparse's
    own exits (``--help``, usage errors) are turned into return values too.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_code(exc.code)
    if args.version:
        print(f"{_PROG} {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{_PROG}: error: a command is required: run, check or ctl", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "ctl":
        from trio_sip.mi.client import run_ctl

        return run_ctl(args.method, args.params, url=args.url, token=args.token,
                       config=args.config, raw_params=args.raw_params,
                       list_methods=args.list_methods, timeout=args.timeout,
                       as_json=args.as_json)
    try:
        overrides = _overrides(args)
        config = load_config(args.config, overrides)
        if args.command == "run" and config.core.workers > 1:
            return _cmd_run_workers(config, args.config, overrides)
        # Module params are checked when the server builds its modules, so a
        # ConfigError can also come from inside the command.
        return _COMMANDS[args.command](config)
    except ConfigError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
