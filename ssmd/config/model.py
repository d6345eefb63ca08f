"""The whole configuration (`Config`) and the sections of its own: `[nats]` with its
stream limits, and `[service]`."""

from __future__ import annotations

import attrs

from ssmd.config.archive import ArchiverConfig, RotationConfig, StorageConfig, SyncConfig
from ssmd.config.connector import ConnectorConfig
from ssmd.config.units import ByteSize, Duration, FieldError, positive_duration, subject_token


@attrs.frozen
class StreamLimits:
    """Limits for a stream that the connector creates; an existing stream is left as it is."""

    max_age: Duration = Duration.parse("7d")
    max_bytes: ByteSize = ByteSize.parse("10GiB")
    max_msgs: int = -1
    duplicate_window: Duration = attrs.field(
        default=Duration.parse("2m"), validator=positive_duration
    )
    replicas: int = attrs.field(default=1)

    @replicas.validator
    def _check_replicas(self, attribute: attrs.Attribute[int], value: int) -> None:
        # JetStream replicates a stream to at most 5 servers.
        if not 1 <= value <= 5:
            raise FieldError(attribute, f"expected a replica count from 1 to 5, got {value!r}")


@attrs.frozen
class NatsConfig:
    url: str | list[str] = "nats://127.0.0.1:4222"
    stream: str = attrs.field(default="MARKETDATA", validator=subject_token)
    connect_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=positive_duration
    )
    request_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=positive_duration
    )
    stream_limits: StreamLimits = StreamLimits()

    @property
    def servers(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)


@attrs.frozen
class ServiceConfig:
    shutdown_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=positive_duration
    )
    log_level: str = attrs.field(default="info")
    # /health, /ready and /metrics; port 0 turns the endpoint off.
    health_host: str = "127.0.0.1"
    health_port: int = attrs.field(default=9108)

    @health_port.validator
    def _check_port(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 0 <= value <= 65535:
            raise FieldError(attribute, f"expected a TCP port from 0 (off) to 65535, got {value!r}")

    @log_level.validator
    def _check_level(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise FieldError(
                attribute, f"expected one of debug, info, warning, error; got {value!r}"
            )


@attrs.frozen
class Config:
    env: str = attrs.field(validator=subject_token)
    nats: NatsConfig = NatsConfig()
    archiver: ArchiverConfig | None = None
    storage: StorageConfig | None = None
    rotation: RotationConfig = RotationConfig()
    # The only `[connector]`, or the first of `[[connector]]`; `connectors` has them all.
    connector: ConnectorConfig | None = None
    service: ServiceConfig = ServiceConfig()
    sync: SyncConfig | None = None
    connectors: tuple[ConnectorConfig, ...] = ()
    # The only `[archiver]`, or every `[[archiver]]` (`archiver` is then the first).
    archivers: tuple[ArchiverConfig, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.connectors and self.connector is not None:
            object.__setattr__(self, "connectors", (self.connector,))
        if not self.archivers and self.archiver is not None:
            object.__setattr__(self, "archivers", (self.archiver,))

    @property
    def sections(self) -> set[str]:
        return {
            name for name in ("archiver", "connector", "sync") if getattr(self, name) is not None
        }
