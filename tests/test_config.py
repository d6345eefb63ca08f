"""The config contract: documented keys, one-line errors, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssmd.config import ConfigError, load_config
from ssmd.config.units import Duration

GOOD = """\
env = "prod"
[nats]
url = "nats://127.0.0.1:4222"
stream = "MARKETDATA"
[archiver]
consumer = "archiver-kalshi"
filter = "prod.kalshi.json.>"
[storage]
path = "/var/lib/ssmd/archive"
[rotation]
interval = "15m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssmd.toml"
    path.write_text(text)
    return path


def test_the_documented_contract_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.env == "prod"
    assert config.nats.servers == ["nats://127.0.0.1:4222"]
    assert config.nats.stream == "MARKETDATA"
    assert config.archiver is not None and config.archiver.consumer == "archiver-kalshi"
    assert config.archiver.feed == "kalshi"
    assert config.storage is not None and config.storage.path == "/var/lib/ssmd/archive"
    assert config.rotation.interval.seconds == 900
    assert config.nats.stream_limits.replicas == 1


def test_a_clustered_stream_takes_a_list_of_urls_and_replicas(tmp_path: Path) -> None:
    text = GOOD.replace(
        'url = "nats://127.0.0.1:4222"',
        'url = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]',
    ).replace('stream = "MARKETDATA"', 'stream = "MARKETDATA"\n[nats.stream_limits]\nreplicas = 3')
    config = load_config(write(tmp_path, text))
    assert len(config.nats.servers) == 3
    assert config.nats.stream_limits.replicas == 3


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (('interval = "15m"', 'interval = "7m"'), "rotation.interval", "divides 24h"),
        (('interval = "15m"', 'interval = "fifteen"'), "rotation.interval", "duration"),
        (('consumer = "archiver-kalshi"\n', ""), "archiver.consumer", "required key is missing"),
        (
            ('stream = "MARKETDATA"', 'stream = "MARKETDATA"\nstreem = "x"'),
            "nats.streem",
            "unknown key",
        ),
        (('env = "prod"', "env = 3"), "env", "expected a string"),
        (('env = "prod"', 'env = "pr.od"'), "env", "one NATS subject token"),
        (('filter = "prod.kalshi.json.>"', 'filter = "prod.*.json.>"'), "archiver.filter", "feed"),
        (("[archiver]", "[archiver]\nbatch_size = 0"), "archiver.batch_size", "positive"),
        (
            ("[archiver]", '[archiver]\nbatch_size = "x"'),
            "archiver.batch_size",
            "expected an integer",
        ),
        (('path = "/var/lib/ssmd/archive"', "path = 5"), "storage.path", "expected a string"),
        (
            ('stream = "MARKETDATA"', 'stream = "MARKETDATA"\n[nats.stream_limits]\nreplicas = 0'),
            "nats.stream_limits.replicas",
            "from 1 to 5",
        ),
        (
            ('stream = "MARKETDATA"', 'stream = "MARKETDATA"\n[nats.stream_limits]\nreplicas = 6'),
            "nats.stream_limits.replicas",
            "from 1 to 5",
        ),
    ],
)
def test_a_bad_key_is_named_with_what_was_expected(
    tmp_path: Path, change: tuple[str, str], key: str, expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert expected in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "env = \n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssmd", *args], capture_output=True, text=True, timeout=60
    )


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    result = run_cli("config", "check", "-c", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_error_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('interval = "15m"', 'interval = "7m"'))
    for args in (
        ["config", "check", "-c", str(path)],
        ["run", "-c", str(path), "--role", "archiver"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(path) in lines[0] and "rotation.interval" in lines[0]


def test_a_role_without_its_section_is_a_config_error(tmp_path: Path) -> None:
    only_nats = 'env = "prod"\n[nats]\nurl = "nats://127.0.0.1:4222"\n'
    result = run_cli("run", "-c", str(write(tmp_path, only_nats)), "--role", "archiver")
    assert result.returncode == 2
    assert "[archiver] is required" in result.stderr


def test_examples_are_valid(tmp_path: Path) -> None:
    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.toml"))
    assert examples, "examples/ has no configs"
    for example in examples:
        result = run_cli("config", "check", "-c", str(example))
        assert result.returncode == 0, f"{example.name}: {result.stderr}"


def test_kalshi_use_demo_selects_the_demo_url_only_when_url_is_unset(tmp_path: Path) -> None:
    from ssmd.config import KALSHI_DEMO_URL, KALSHI_PROD_URL

    base = (
        'env = "prod"\n[nats]\nurl = "nats://127.0.0.1:4222"\n[connector]\nchannels = ["trade"]\n'
    )
    connector = load_config(write(tmp_path, base)).connector
    assert connector is not None
    assert connector.resolved_url({}) == KALSHI_PROD_URL
    assert connector.resolved_url({"KALSHI_USE_DEMO": "true"}) == KALSHI_DEMO_URL
    explicit = load_config(
        write(tmp_path, base + 'url = "ws://127.0.0.1:1/trade-api/ws/v2"\n')
    ).connector
    assert explicit is not None
    assert explicit.resolved_url({"KALSHI_USE_DEMO": "true"}) == "ws://127.0.0.1:1/trade-api/ws/v2"


CONNECTOR_BASE = 'env = "prod"\n'


def test_a_single_connector_table_keeps_working_and_speaks_kalshi(tmp_path: Path) -> None:
    text = CONNECTOR_BASE + '[connector]\nfeed = "kalshi-a"\nmarkets_per_connection = 5\n'
    config = load_config(write(tmp_path, text))
    assert config.connector is not None and config.connectors == (config.connector,)
    assert config.connector.venue == "kalshi"
    assert config.connector.markets_per_connection == 5
    assert config.connector.markets_per_subscription is None  # the venue's default


def test_several_connectors_are_an_array_of_tables_with_kinds(tmp_path: Path) -> None:
    text = CONNECTOR_BASE + (
        '[[connector]]\nfeed = "kalshi"\nchannels = ["ticker"]\n'
        '[[connector]]\nfeed = "polymarket"\nchannels = ["market"]\n'
        'markets = ["0x5f65"]\nrest_url = "http://127.0.0.1:1"\n'
        '[[connector]]\nfeed = "kraken"\nchannels = ["book", "trade"]\n'
        'markets = ["BTC/USD"]\ndepth = 25\n'
        '[[connector]]\nfeed = "kalshi_b"\nkind = "kalshi"\nchannels = ["trade"]\n'
    )
    config = load_config(write(tmp_path, text))
    assert [(c.feed, c.venue) for c in config.connectors] == [
        ("kalshi", "kalshi"),
        ("polymarket", "polymarket"),
        ("kraken", "kraken"),
        ("kalshi_b", "kalshi"),
    ]
    assert config.connector == config.connectors[0]
    assert config.connectors[1].rest_url == "http://127.0.0.1:1"
    assert config.connectors[2].depth == 25


def test_each_venue_has_its_own_default_channels(tmp_path: Path) -> None:
    text = CONNECTOR_BASE + (
        '[[connector]]\nfeed = "kalshi"\n'
        '[[connector]]\nfeed = "polymarket"\nmarkets = ["0x5f65"]\n'
        '[[connector]]\nfeed = "k2"\nkind = "kraken"\nmarkets = ["BTC/USD"]\n'
    )
    config = load_config(write(tmp_path, text))
    assert [c.channels for c in config.connectors] == [
        ["ticker", "trade", "orderbook_delta"],
        ["market"],
        ["book", "trade", "ticker"],
    ]


@pytest.mark.parametrize(
    ("tables", "key", "expected"),
    [
        ('[[connector]]\nfeed = "mine"\n', "connector[0].kind", "kind is required"),
        (
            '[[connector]]\nfeed = "kalshi"\n[[connector]]\nfeed = "x"\nkind = "binance"\n',
            "connector[1].kind",
            "expected one of kalshi, polymarket, kraken",
        ),
        ('[connector]\nkind = "nyse"\n', "connector.kind", "expected one of kalshi"),
        (
            '[[connector]]\nfeed = "kalshi"\n[[connector]]\nfeed = "kalshi"\n',
            "connector[1].feed",
            "already used by connector[0]",
        ),
        (
            '[[connector]]\nfeed = "kalshi"\n[[connector]]\nfeed = "polymarket"\n',
            "connector[1].markets",
            "must list condition ids",
        ),
        ('[[connector]]\nfeed = "kraken"\n', "connector[0].markets", "must list symbols"),
        (
            '[[connector]]\nfeed = "polymarket"\nmarkets = ["0x1"]\nchannels = ["ticker"]\n',
            "connector[0].channels",
            "'ticker' not a polymarket channel; expected some of market",
        ),
        (
            '[[connector]]\nfeed = "k2"\nkind = "kraken"\nmarkets = ["BTC/USD"]\n'
            'channels = ["book", "orderbook_delta"]\n',
            "connector[0].channels",
            "'orderbook_delta' not a kraken channel",
        ),
        (
            '[[connector]]\nfeed = "kraken"\nmarkets = ["BTC/USD"]\nchannels = ["instrument"]\n',
            "connector[0].channels",
            "'instrument' not a kraken channel; expected some of book, ohlc, ticker, trade",
        ),
        ('[[connector]]\nfeed = "kraken"\ndepth = 7\n', "connector[0].depth", "Kraken book depth"),
        ('[connector]\nfeed = "kalshi"\ndepth = 10\n', "connector.depth", "kraken"),
        ('[[connector]]\nfeed = "kalshi"\nmarkts = []\n', "connector[0].markts", "unknown key"),
        (
            "[connector]\nmarkets_per_connection = 0\n",
            "connector.markets_per_connection",
            "positive",
        ),
        ("connectors = 1\n", "connectors", "[[connector]]"),
        ('[connector]\nread_interval = "2s"\n', "connector.read_interval", "at most 1s"),
        (
            '[connector]\nread_interval = "1s"\nliveness_timeout = "1s"\n',
            "connector.read_interval",
            "at most half of liveness_timeout (1s)",
        ),
        ('[connector]\nread_interval = "-5ms"\n', "connector.read_interval", "a duration such as"),
    ],
)
def test_a_bad_connector_key_is_named(tmp_path: Path, tables: str, key: str, expected: str) -> None:
    path = write(tmp_path, CONNECTOR_BASE + tables)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert expected in message


ARCHIVER_BASE = 'env = "prod"\n'
STORAGE = '[storage]\npath = "/var/lib/ssmd/archive"\n'


def test_a_single_archiver_table_keeps_working(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.archiver is not None and config.archivers == (config.archiver,)


def test_several_archivers_are_an_array_of_tables_one_per_feed(tmp_path: Path) -> None:
    text = ARCHIVER_BASE + "".join(
        f'[[archiver]]\nconsumer = "archiver-{feed}"\nfilter = "prod.{feed}.json.>"\n'
        for feed in ("kalshi", "polymarket", "kraken")
    )
    text += "batch_size = 50\n" + STORAGE  # batch_size: the last table's own key
    config = load_config(write(tmp_path, text))
    assert [(a.feed, a.consumer) for a in config.archivers] == [
        ("kalshi", "archiver-kalshi"),
        ("polymarket", "archiver-polymarket"),
        ("kraken", "archiver-kraken"),
    ]
    assert config.archiver == config.archivers[0]
    assert [a.batch_size for a in config.archivers] == [1000, 1000, 50]
    assert "archiver" in config.sections


@pytest.mark.parametrize(
    ("tables", "key", "expected"),
    [
        (
            '[[archiver]]\nconsumer = "a"\nfilter = "prod.kraken.json.>"\n'
            '[[archiver]]\nconsumer = "b"\nfilter = "prod.kraken.json.trade.>"\n',
            "archiver[1].filter",
            "feed 'kraken' (the filter's second token) is already archived by archiver[0]",
        ),
        (
            '[[archiver]]\nconsumer = "a"\nfilter = "prod.kraken.json.>"\n'
            '[[archiver]]\nconsumer = "a"\nfilter = "prod.kalshi.json.>"\n',
            "archiver[1].consumer",
            "already used by archiver[0]",
        ),
        ('[[archiver]]\nconsumer = "a"\n', "archiver[0].filter", "required key is missing"),
        (
            '[[archiver]]\nconsumer = "a"\nfilter = "prod.kraken.json.>"\nbach_size = 5\n',
            "archiver[0].bach_size",
            "unknown key",
        ),
        (
            '[[archiver]]\nconsumer = "a"\nfilter = "prod.*.json.>"\n',
            "archiver[0].filter",
            "cannot be a wildcard",
        ),
        ("archiver = 1\n", "archiver", "[[archiver]]"),
        ("archivers = 1\n", "archivers", "[[archiver]]"),
    ],
)
def test_a_bad_archiver_key_is_named(tmp_path: Path, tables: str, key: str, expected: str) -> None:
    path = write(tmp_path, ARCHIVER_BASE + tables + STORAGE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert expected in message


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[connector]\nfeed = "kalshi"\nchannels = "trade"', "connector.channels"),
        ('[connector]\nfeed = "kalshi"\nmarkets = "KXBTCD-1"', "connector.markets"),
        (
            '[connector]\nfeed = "kalshi"\n[connector.discovery]\nseries = "KXBTCD"',
            "connector.discovery.series",
        ),
    ],
)
def test_a_string_where_a_list_belongs_is_refused_not_split_into_letters(
    tmp_path: Path, table: str, key: str
) -> None:
    path = write(tmp_path, f'env = "prod"\n[nats]\nurl = "nats://127.0.0.1:4222"\n{table}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert "expected a list of strings" in message


def test_every_public_name_of_the_old_config_module_is_still_importable() -> None:
    """`ssmd/config.py` became a package; what could be imported from it still can."""
    import ssmd.config
    from ssmd.feeds.kraken_book import DEPTHS

    old = [
        "KRAKEN_BOOK_DEPTHS",
        "KALSHI_PROD_URL",
        "KALSHI_DEMO_URL",
        "VENUE_KINDS",
        "DEFAULT_CHANNELS",
        "VENUE_CHANNELS",
        "MARKETS_REQUIRED",
        "FieldError",
        "ConfigError",
        "Duration",
        "ByteSize",
        "StreamLimits",
        "NatsConfig",
        "ArchiverConfig",
        "StorageConfig",
        "RotationConfig",
        "DiscoveryConfig",
        "ConnectorConfig",
        "ServiceConfig",
        "SYNC_SCHEMES",
        "SyncConfig",
        "Config",
        "parse_config",
        "load_config",
    ]
    missing = [name for name in old if not hasattr(ssmd.config, name)]
    assert not missing, missing
    assert ssmd.config.KRAKEN_BOOK_DEPTHS == DEPTHS


@pytest.mark.parametrize("interval", ["0ms", "1s", "250ms"])
def test_read_interval_takes_zero_up_to_one_second(tmp_path: Path, interval: str) -> None:
    path = write(tmp_path, CONNECTOR_BASE + f'[connector]\nread_interval = "{interval}"\n')
    config = load_config(path)
    assert config.connectors[0].read_interval == Duration.parse(interval)
