"""`ssmd run --role connector` as a subprocess: refused starts and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.simulators.kalshi import trade_msg
from tests import configs
from tests.keys import API_KEY, other_private_key, pem, private_key
from tests.test_connector_e2e import STREAM, fake_exchange, stream_messages

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, nats_url: str, ws_url: str) -> Path:
    return configs.write_config(
        tmp_path / "ssmd.toml",
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "connector": {
                "url": ws_url,
                "channels": ["trade"],
                "markets": ["KXA-1"],
                "backoff_initial": "50ms",
                "backoff_max": "200ms",
            },
        },
    )


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(values)
    return env


def run_cli(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssmd", "run", "-c", str(config), "--role", "connector"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_garbage_key_exits_2_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "nats://127.0.0.1:9", "ws://127.0.0.1:9/trade-api/ws/v2")
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    result = run_cli(config, env_with(KALSHI_API_KEY=API_KEY, KALSHI_PRIVATE_KEY=secret))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "KALSHI_PRIVATE_KEY is not an unencrypted RSA private key" in lines[0]
    assert "TOPSECRET" not in result.stderr and "Traceback" not in result.stderr


def test_missing_key_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "nats://127.0.0.1:9", "ws://127.0.0.1:9/trade-api/ws/v2")
    result = run_cli(config, env_with())
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ssmd: config error: KALSHI_API_KEY is not set; the connector needs Kalshi API credentials"
    )


async def test_key_rejected_by_the_exchange_exits_2(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    wrong = pem(other_private_key())
    async with fake_exchange() as exchange:
        config = write_config(tmp_path, nats_server.url, exchange.url)
        result = await trio.run_process(
            [sys.executable, "-m", "ssmd", "run", "-c", str(config), "--role", "connector"],
            env=env_with(KALSHI_API_KEY=API_KEY, KALSHI_PRIVATE_KEY=wrong),
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert exchange.rejections == ["invalid signature"]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("ssmd: refusing to start: Kalshi rejected the credentials (HTTP 401)")
    assert "Traceback" not in stderr
    body = "".join(wrong.splitlines()[1:-1])
    assert body[:40] not in stderr


async def test_sigterm_drains_the_publisher_and_exits_0(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with fake_exchange() as exchange:
        config = write_config(tmp_path, nats_server.url, exchange.url)
        env = env_with(KALSHI_API_KEY=API_KEY, KALSHI_PRIVATE_KEY=pem(private_key(), pkcs1=True))
        async with trio.open_nursery() as nursery:
            command = [
                sys.executable,
                "-m",
                "ssmd",
                "run",
                "-c",
                str(config),
                "--role",
                "connector",
            ]
            run = partial(trio.run_process, command, env=env, cwd=ROOT, check=False)
            process = await nursery.start(run)
            session = await exchange.session(0, timeout=15)
            await session.wait_until(lambda: len(session.subscriptions) == 1)
            sid = session.sub_for("trade").sid
            sent = [
                await session.send_data("trade", sid, trade_msg("KXA-1", n)) for n in range(20_000)
            ]
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await process.wait()
        assert process.returncode == 0
    messages = await stream_messages(nats_server.url, 1)
    payloads = [m.data for m in messages]
    assert json.loads(payloads[0])["type"] == "ssmd_connect"
    # The shutdown record is queued behind everything received, so finding it last
    # proves the publisher drained before the process exited. The stop unsubscribed
    # and read until the exchange confirmed, so every frame sent before it is there.
    assert json.loads(payloads[-1]) == {
        **json.loads(payloads[-1]),
        "type": "ssmd_disconnect",
        "reason": "shutdown: unsubscribed, nothing in flight",
    }
    assert payloads[1:-1] == sent
    async with open_bridge([nats_server.url]) as bridge:
        state = await bridge.stream_state(STREAM)
    assert state is not None and state.messages == len(payloads)
