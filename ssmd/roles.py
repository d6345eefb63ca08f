"""The roles ssmd runs, in one registry.

For each role: the config sections it needs (the first one enables it: `ssmd run`
without `--role` runs every role whose section is present), whether it needs exchange
credentials, the stage it stops in, and how it is started. The CLI (`ssmd run --role`,
`ssmd config check`, `ssmd sync`), `ssmd run` (ssmd.service) and the demo all read it.

Roles start in registry order (the connector first: it creates the stream the archiver
reads) and stop by stage (the connector first: its last messages and its `disconnect`
record are acknowledged before the archiver is asked to finish, so one process stops
with a complete archive).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ssmd.config import Config, ConfigError

if TYPE_CHECKING:
    from ssmd.clock import WallClock
    from ssmd.connector.auth import Credentials
    from ssmd.nats.bridge import NatsBridge
    from ssmd.supervisor import Supervisor


@attrs.frozen
class RoleContext:
    """What every role may need to start."""

    config: Config
    bridge: NatsBridge
    clock: WallClock
    credentials: Credentials | None = None
    # Every role started in this process.
    roles: tuple[str, ...] = ()


Starter = Callable[["Supervisor", RoleContext], Awaitable[Any]]


@attrs.frozen
class Role:
    name: str
    sections: tuple[str, ...]
    stop_stage: int
    start: Starter
    credentials: bool = False

    @property
    def enabled_by(self) -> str:
        return self.sections[0]


async def _start_connector(sup: Supervisor, ctx: RoleContext) -> Any:
    from ssmd.connector.service import start_connector

    # Credentials are loaded only when a configured venue signs its handshake (Kalshi).
    return await start_connector(sup, ctx.config, ctx.bridge, ctx.clock, ctx.credentials)


async def _start_archiver(sup: Supervisor, ctx: RoleContext) -> Any:
    from ssmd.archiver.service import start_archivers

    # Every `[archiver]`/`[[archiver]]`, each with its own consumer, in this one stage.
    # Beside a connector, a stop lets each archiver take what the connector published.
    return await start_archivers(
        sup, ctx.config, ctx.bridge, ctx.clock, drain_on_stop="connector" in ctx.roles
    )


async def _start_sync(sup: Supervisor, ctx: RoleContext) -> Any:
    from pathlib import Path

    from ssmd.sync import run_sync_role

    config = ctx.config
    assert config.sync is not None and config.storage is not None
    sup.start_producer("sync", run_sync_role, Path(config.storage.path), config.sync)
    return None


# In start order.
ROLES: tuple[Role, ...] = (
    Role("connector", ("connector",), stop_stage=0, start=_start_connector, credentials=True),
    Role("archiver", ("archiver", "storage"), stop_stage=1, start=_start_archiver),
    Role("sync", ("sync", "storage"), stop_stage=0, start=_start_sync),
)
ROLE_NAMES = tuple(role.name for role in ROLES)
_BY_NAME = {role.name: role for role in ROLES}


def role(name: str) -> Role:
    return _BY_NAME[name]


def configured_roles(config: Config) -> list[str]:
    """Every role whose enabling section is in the config."""
    return [r.name for r in ROLES if getattr(config, r.enabled_by) is not None]


def check_roles(config: Config, names: Sequence[str], file: str) -> None:
    """Every named role exists and has the sections it needs; else a ConfigError."""
    for name in names:
        found = _BY_NAME.get(name)
        if found is None:
            raise ConfigError(
                file, "", f"unknown role {name!r}; expected one of {', '.join(ROLE_NAMES)}"
            )
        for section in found.sections:
            if getattr(config, section) is None:
                raise ConfigError(
                    file, section, f"section [{section}] is required for --role {name}"
                )


def resolve_roles(requested: Sequence[str], config: Config, file: str) -> list[str]:
    """The roles to run, in start order: those requested, or every configured one."""
    names = list(requested) or configured_roles(config)
    if not names:
        raise ConfigError(
            file, "", "no role to run: add an [archiver] or [connector] section, or pass --role"
        )
    check_roles(config, names, file)
    return [r.name for r in ROLES if r.name in names]


def needs_credentials(names: Sequence[str]) -> bool:
    return any(_BY_NAME[name].credentials for name in names)


async def start_roles(sup: Supervisor, names: Sequence[str], ctx: RoleContext) -> dict[str, Any]:
    """Start the named roles in registry order, each in its stop stage; what each
    role's starter returned, by name."""
    started: dict[str, Any] = {}
    ctx = attrs.evolve(ctx, roles=tuple(names))
    for r in ROLES:
        if r.name in names:
            with sup.stop_stage(r.stop_stage):
                started[r.name] = await r.start(sup, ctx)
    return started
