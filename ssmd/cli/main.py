"""The `ssmd` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import trio

from ssmd import __version__
from ssmd.config import Config, ConfigError, load_config
from ssmd.roles import ROLE_NAMES, check_roles, needs_credentials, resolve_roles
from ssmd.supervisor import EXIT_CONFIG, StartupRefused

log = logging.getLogger("ssmd")

_DESCRIPTION = """\
ssmd records prediction-market data: Kalshi WebSocket -> NATS JetStream -> JSONL.gz archive.

  ssmd run -c ssmd.toml                      run every role configured in the file
  ssmd run -c ssmd.toml --role archiver      only the archiver
  ssmd config check -c ssmd.toml             validate a config and exit
  ssmd run --demo                            a self-contained demo (simulated exchange)
  ssmd data ls --path /var/lib/ssmd/archive  what is archived, per feed and day
  ssmd data verify --path ...                check files against manifests (exit 1 if not)

Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration or refused start.
"""


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _split_roles(values: list[str] | None) -> list[str]:
    roles: list[str] = []
    for value in values or []:
        for role in value.split(","):
            role = role.strip()
            if role and role not in roles:
                roles.append(role)
    return roles


def _config_error(exc: Exception) -> int:
    print(f"ssmd: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _needs_credentials(config: Config) -> bool:
    """Whether a configured connector's venue signs its handshake (Kalshi)."""
    from ssmd.feeds import VenueUnavailable, load_venue

    for cc in config.connectors:
        try:
            if load_venue(cc.venue).needs_credentials:
                return True
        except VenueUnavailable:
            continue  # the start refuses it with a clearer line
    return False


def cmd_run(args: argparse.Namespace) -> int:
    if args.demo:
        if args.config or args.role:
            print("ssmd: run --demo takes no -c/--config or --role", file=sys.stderr)
            return EXIT_CONFIG
        return cmd_demo(args)
    if not args.config:
        print("ssmd: run needs -c CONFIG (or --demo for the self-contained demo)", file=sys.stderr)
        return EXIT_CONFIG
    if args.duration is not None or args.data_dir is not None:
        print("ssmd: --duration and --data-dir go with --demo", file=sys.stderr)
        return EXIT_CONFIG
    from ssmd.service import run_service

    try:
        config = load_config(args.config)
        roles = resolve_roles(_split_roles(args.role), config, args.config)
        credentials = None
        if needs_credentials(roles) and _needs_credentials(config):
            from ssmd.connector.auth import load_credentials

            credentials = load_credentials(os.environ)
    except (ConfigError, StartupRefused) as exc:
        return _config_error(exc)
    setup_logging(args.log_level or config.service.log_level)
    log.info("ssmd %s starting roles: %s", __version__, ", ".join(roles))
    try:
        return trio.run(lambda: run_service(config, roles, credentials=credentials))
    except StartupRefused as exc:
        print(f"ssmd: refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        roles = resolve_roles(_split_roles(args.role), config, args.config)
    except ConfigError as exc:
        return _config_error(exc)
    print(f"{args.config}: ok (env={config.env}, roles: {', '.join(roles)})")
    return 0


DEMO_DATA_DIR = "./ssmd-data"
DEMO_DURATION_S = 20.0


def cmd_demo(args: argparse.Namespace) -> int:
    from ssmd.demo import run_demo

    setup_logging(args.log_level or "info")
    return run_demo(
        data_dir=args.data_dir or DEMO_DATA_DIR,
        duration=DEMO_DURATION_S if args.duration is None else args.duration,
    )


_DEMO_DESCRIPTION = (
    "A self-contained demo that needs no credentials: a simulated Kalshi exchange on a "
    "local WebSocket, an embedded nats-server, and the real connector and archiver, "
    "archiving under --data-dir. Running it again continues the same archive."
)


def _add_demo_arguments(parser: argparse.ArgumentParser, *, with_demo_flag: bool) -> None:
    prefix = "with --demo: " if with_demo_flag else ""
    if with_demo_flag:
        parser.add_argument("--demo", action="store_true", help=_DEMO_DESCRIPTION)
    parser.add_argument(
        "--data-dir", help=f"{prefix}where the demo keeps its data (default {DEMO_DATA_DIR})"
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help=f"{prefix}seconds to run, then stop cleanly (default {DEMO_DURATION_S:g})",
    )


def cmd_sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssmd.sync import SyncFailed, run_sync_until_signalled, sync_once

    try:
        config = load_config(args.config)
        check_roles(config, ["sync"], args.config)
    except ConfigError as exc:
        return _config_error(exc)
    assert config.sync is not None and config.storage is not None
    sync, root = config.sync, Path(config.storage.path)
    setup_logging(args.log_level or config.service.log_level)
    try:
        if not args.once:
            trio.run(run_sync_until_signalled, root, sync)
            return 0
        report = trio.run(lambda: sync_once(root, sync.destination, feeds=sync.feeds or None))
    except SyncFailed as exc:
        print(f"ssmd: sync failed: {exc}", file=sys.stderr)
        return 1
    for error in report.errors:
        print(f"ssmd: sync: {error}", file=sys.stderr)
    print(f"sync {root} -> {sync.destination}: {report.summary()}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmd", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ssmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the recorder (connector and/or archiver)",
        description="Run one or more roles in one process under one supervisor. "
        "SIGINT/SIGTERM stop it cleanly: the open file is finished and the manifest written.",
    )
    run.add_argument("-c", "--config", help="path to the TOML config (required without --demo)")
    run.add_argument(
        "--role",
        action="append",
        metavar="ROLE",
        help=f"role to run ({', '.join(ROLE_NAMES)}); repeat or comma-separate. "
        "Default: every role that has a section in the config",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _add_demo_arguments(run, with_demo_flag=True)
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser(
        "check", help="validate a config file without running anything (exit 2 on error)"
    )
    check.add_argument("-c", "--config", required=True, help="path to the TOML config")
    check.add_argument(
        "--role", action="append", metavar="ROLE", help="also check this role's sections"
    )
    check.set_defaults(func=cmd_config_check)

    demo = sub.add_parser(
        "demo",
        help="the same as `ssmd run --demo`",
        description=_DEMO_DESCRIPTION,
    )
    _add_demo_arguments(demo, with_demo_flag=False)
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=cmd_demo)

    sync = sub.add_parser(
        "sync",
        help="upload finished archive files and manifests to gs://, s3:// or file://",
        description="Upload the finished .jsonl.gz files and manifests under [storage] path "
        "to [sync] destination; what is already there is skipped. With --once: one pass, "
        "exit 0 if everything is at the destination, 1 if an upload failed, 2 on a config "
        "error. Without: a pass every [sync] interval until SIGINT/SIGTERM.",
    )
    sync.add_argument("-c", "--config", required=True, help="path to the TOML config")
    sync.add_argument("--once", action="store_true", help="one pass, then exit (systemd timer)")
    sync.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sync.set_defaults(func=cmd_sync)

    from ssmd.cli.data import add_data_commands

    add_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "data":
        from ssmd.cli.data import run_data_command

        return run_data_command(args)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
