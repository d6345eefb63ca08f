"""What crosses the bridge: value types, header names, and the one error map.

Every nats-py failure that means "NATS is not reachable or did not answer in time" becomes
`NatsUnavailable`, which callers retry; anything else is a bug or a refusal and stays as
it is.
"""

from __future__ import annotations

import attrs
import nats.errors
import nats.js.errors

MSG_ID_HEADER = "Nats-Msg-Id"
RECV_NS_HEADER = "Ssmd-Recv-Ns"
# Present ("1") on a message fetched from the venue's REST API after a loss (backfill).
BACKFILLED_HEADER = "Ssmd-Backfilled"


class NatsUnavailable(Exception):
    """NATS cannot be reached or did not answer in time; the caller retries."""


class ConsumerLost(NatsUnavailable):
    """The pull consumer is gone: deleted, no responders, or silent past its heartbeats."""


@attrs.frozen(slots=True)
class FetchedMessage:
    subject: str
    data: bytes
    stream_seq: int
    consumer_seq: int
    delivered: int
    recv_ns: int | None
    reply: str
    # Messages matching the consumer's filter still in the stream after this one.
    pending: int = 0
    backfilled: bool = False


@attrs.frozen
class StreamState:
    name: str
    subjects: list[str]
    first_seq: int
    last_seq: int
    messages: int
    retention: str


@attrs.frozen
class ConsumerPosition:
    """How far a consumer has got: the last stream sequence and the last delivery
    (consumer sequence) delivered to it, and how many messages matching its filter the
    stream holds beyond that.

    `delivered_seq` can lie below anything this filter ever matched (a consumer opened
    below the stream's first sequence reports first-1), so "taken everything" is
    measured in deliveries, `consumer_seq`, never in stream sequences."""

    delivered_seq: int
    pending: int
    consumer_seq: int


@attrs.frozen(slots=True)
class OutgoingMessage:
    subject: str
    payload: bytes
    msg_id: str
    recv_ns: int
    backfilled: bool = False


@attrs.frozen(slots=True)
class CoreMessage:
    """A core NATS publish (`publish_core`, replaying the archive): no msg id, no ack.
    `recv_ns` None (a record without a receive time) leaves `Ssmd-Recv-Ns` out;
    `backfilled` sets `Ssmd-Backfilled`, as the live publish of a REST-fetched trade does."""

    subject: str
    payload: bytes
    recv_ns: int | None
    backfilled: bool = False


@attrs.frozen(slots=True)
class PublishOutcome:
    """Result of one JetStream publish: stored (maybe as a duplicate) or failed."""

    stream_seq: int | None = None
    duplicate: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float
    max_bytes: int
    max_msgs: int
    duplicate_window_s: float
    replicas: int


_UNAVAILABLE = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    ConnectionError,
    OSError,
)


def as_unavailable(exc: BaseException) -> NatsUnavailable | None:
    """The `NatsUnavailable` that `exc` means, or None when it means something else."""
    if isinstance(exc, NatsUnavailable):
        return exc
    if isinstance(exc, _UNAVAILABLE):
        return NatsUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, nats.js.errors.APIError) and exc.code == 503:
        return NatsUnavailable(f"JetStream unavailable: {exc.description}")
    return None
