"""JetStream administration (runs on the asyncio side): streams and consumers.

The archiver never creates or changes streams; the connector creates its stream when it
is missing. Consumers are recreated at the archive's position (the archive is the cursor).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import nats.js.errors
from nats.js import api

from ssmd.nats.direct import subscribe_direct
from ssmd.nats.pull import PendingAck, PullState
from ssmd.nats.types import ConsumerPosition, StreamSpec, StreamState


def _stream_state(info: api.StreamInfo) -> StreamState:
    config = info.config
    state = info.state
    retention = getattr(config.retention, "value", config.retention) or "limits"
    return StreamState(
        name=config.name or "",
        subjects=list(config.subjects or []),
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        messages=state.messages,
        retention=str(retention),
    )


async def stream_state(js: Any, stream: str) -> StreamState | None:
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None
    return _stream_state(info)


async def ensure_stream(js: Any, spec: StreamSpec) -> tuple[StreamState, bool]:
    try:
        return _stream_state(await js.stream_info(spec.name)), False
    except nats.js.errors.NotFoundError:
        pass
    config = api.StreamConfig(
        name=spec.name,
        subjects=spec.subjects,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=spec.max_age_s or None,
        max_bytes=spec.max_bytes or None,
        max_msgs=spec.max_msgs,
        duplicate_window=spec.duplicate_window_s,
        num_replicas=spec.replicas,
    )
    try:
        info = await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Another process created it between our look and our add.
        info = await js.stream_info(spec.name)
        return _stream_state(info), False
    return _stream_state(info), True


async def delete_consumer(js: Any, stream: str, durable: str) -> bool:
    try:
        await js.delete_consumer(stream, durable)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _consumer_info(js: Any, stream: str, durable: str) -> api.ConsumerInfo | None:
    try:
        info: api.ConsumerInfo = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return None
    return info


async def consumer_ack_floor(js: Any, stream: str, durable: str) -> int | None:
    info = await _consumer_info(js, stream, durable)
    floor = info.ack_floor if info is not None else None
    return int(floor.stream_seq) if floor is not None and floor.stream_seq else None


async def consumer_position(js: Any, stream: str, durable: str) -> ConsumerPosition | None:
    info = await _consumer_info(js, stream, durable)
    if info is None:
        return None
    delivered = info.delivered
    return ConsumerPosition(
        delivered_seq=int(delivered.stream_seq or 0) if delivered is not None else 0,
        pending=int(info.num_pending or 0),
        consumer_seq=int(delivered.consumer_seq or 0) if delivered is not None else 0,
    )


async def reset_pull_consumer(
    nc: Any,
    js: Any,
    stream: str,
    durable: str,
    filter_subject: str,
    start_seq: int | None,
    ack_wait_s: float,
    max_ack_pending: int,
    linger_s: float,
    acks: PendingAck | None = None,
) -> PullState:
    """Recreate the durable consumer to start at `start_seq` (None: the stream's
    beginning) and subscribe its delivery inbox."""
    with suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(stream, durable)
    if start_seq is None:
        policy, opt_start = api.DeliverPolicy.ALL, None
    else:
        policy, opt_start = api.DeliverPolicy.BY_START_SEQUENCE, start_seq
    config = api.ConsumerConfig(
        durable_name=durable,
        deliver_policy=policy,
        opt_start_seq=opt_start,
        ack_policy=api.AckPolicy.ALL,
        ack_wait=ack_wait_s,
        max_ack_pending=max_ack_pending,
        filter_subject=filter_subject,
        max_deliver=-1,
    )
    await js.add_consumer(stream, config)
    state = PullState(
        nc, stream, durable, expires_s=max(ack_wait_s / 2, 5.0), linger_s=linger_s, acks=acks
    )
    state.sub = await subscribe_direct(nc, state.inbox, state.on_message)
    return state
