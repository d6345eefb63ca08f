"""Where the archive goes: `[archiver]` / `[[archiver]]`, `[storage]`, `[rotation]` and
`[sync]`."""

from __future__ import annotations

import attrs

from ssmd.config.units import (
    Duration,
    FieldError,
    positive,
    positive_duration,
    subject_token,
)


@attrs.frozen
class ArchiverConfig:
    consumer: str = attrs.field(validator=subject_token)
    filter: str = attrs.field()
    batch_size: int = attrs.field(default=1000, validator=positive)
    fetch_timeout: Duration = attrs.field(default=Duration.parse("1s"), validator=positive_duration)
    ack_wait: Duration = attrs.field(default=Duration.parse("60s"), validator=positive_duration)
    queue_batches: int = attrs.field(default=4, validator=positive)
    compression_level: int = attrs.field(default=6)
    # Wait this long for a batch to fill at low rates: fewer fsyncs and wakeups per
    # message for a little latency. 0 hands over whatever has arrived at once.
    linger: Duration = Duration.parse("20ms")

    @filter.validator
    def _check_filter(self, attribute: attrs.Attribute[str], value: str) -> None:
        tokens = value.split(".")
        if len(tokens) < 2 or any(not t for t in tokens):
            raise FieldError(
                attribute, f"expected a subject filter like 'prod.kalshi.json.>', got {value!r}"
            )
        if tokens[1] in ("*", ">"):
            raise FieldError(
                attribute, f"the second token names the feed and cannot be a wildcard: {value!r}"
            )

    @compression_level.validator
    def _check_level(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 1 <= value <= 9:
            raise FieldError(attribute, f"expected a gzip level from 1 to 9, got {value!r}")

    @property
    def feed(self) -> str:
        return self.filter.split(".")[1]


@attrs.frozen
class StorageConfig:
    path: str = attrs.field()

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value.strip():
            raise FieldError(attribute, "expected a directory path")


@attrs.frozen
class RotationConfig:
    interval: Duration = attrs.field(default=Duration.parse("15m"))

    @interval.validator
    def _check_interval(self, attribute: attrs.Attribute[Duration], value: Duration) -> None:
        seconds = value.seconds
        if seconds < 1 or seconds != int(seconds) or 86400 % int(seconds) != 0:
            raise FieldError(
                attribute,
                f"expected a whole number of seconds that divides 24h (e.g. '15m', '1h'), got {value.text!r}",
            )


SYNC_SCHEMES = ("gs", "s3", "file")


@attrs.frozen
class SyncConfig:
    """Uploads of the finished archive to `gs://bucket/prefix`, `s3://...` or `file:///path`."""

    destination: str = attrs.field()
    interval: Duration = attrs.field(default=Duration.parse("5m"), validator=positive_duration)
    # Feed directories to upload; empty means every feed under storage.path.
    feeds: list[str] = attrs.field(factory=list)

    @destination.validator
    def _check_destination(self, attribute: attrs.Attribute[str], value: str) -> None:
        scheme, separator, rest = value.partition("://")
        if scheme == "file":
            valid = rest.startswith("/") and rest.strip("/") != ""
        else:
            valid = scheme in SYNC_SCHEMES and rest.split("/")[0] != ""
        if not separator or not valid:
            raise FieldError(
                attribute,
                "expected a URL such as 'gs://bucket/prefix', 's3://bucket/prefix' or "
                f"'file:///absolute/path' (schemes: {', '.join(SYNC_SCHEMES)}), got {value!r}",
            )

    @feeds.validator
    def _check_feeds(self, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
        for feed in value:
            subject_token(self, attribute, feed)
