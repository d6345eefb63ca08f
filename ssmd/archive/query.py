"""SQL over the archive with DuckDB: the exported tables as views, and the raw JSONL.

Each exported table is a view of its name over `{parquet}/{table}/**/*.parquet` with
hive partitioning (`feed`, `date` columns). The view `jsonl` reads the finished
`*.jsonl.gz` files (never `.partial`) with `read_ndjson_objects`, which infers no schema
and so drops no field: `json` is the whole line, and `feed`, `date`, `seq`, `subject`,
`recv_ns`, `type` and `market` (the subject's key, decoded, as in the Parquet tables;
NULL on ssmd's own and unrouted subjects) are taken out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from ssmd.archive.errors import ArchiveError
from ssmd.archive.tables import TABLES


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(parquet: Path | None = None, archive: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views defined."""
    con = duckdb.connect()
    if parquet is not None:
        for table in TABLES:
            if any((parquet / table).glob("feed=*/date=*/*.parquet")):
                glob = _quote(str(parquet / table / "*" / "*" / "*.parquet"))
                con.execute(
                    f"CREATE VIEW {table} AS SELECT * FROM read_parquet({glob}, "
                    "hive_partitioning = true, union_by_name = true)"
                )
    if archive is not None and any(archive.glob("*/*/*.jsonl.gz")):
        glob = _quote(str(archive / "*" / "*" / "*.jsonl.gz"))
        con.execute(
            f"""CREATE VIEW jsonl AS SELECT
                regexp_extract(filename, '/([^/]+)/\\d{{4}}-\\d{{2}}-\\d{{2}}/[^/]+$', 1) AS feed,
                CAST(regexp_extract(filename, '/(\\d{{4}}-\\d{{2}}-\\d{{2}})/[^/]+$', 1) AS DATE) AS date,
                CAST(json->>'_seq' AS BIGINT) AS seq,
                json->>'_subject' AS subject,
                CAST(json->>'_recv_ns' AS BIGINT) AS recv_ns,
                split_part(json->>'_subject', '.', 4) AS type,
                CASE WHEN split_part(json->>'_subject', '.', 4) IN ('ssmd', 'unrouted') THEN NULL
                    ELSE url_decode(NULLIF(regexp_extract(json->>'_subject', '^(?:[^.]*[.]){{4}}(.*)$', 1), ''))
                END AS market,
                json, filename
            FROM read_ndjson_objects({glob}, filename = true, maximum_object_size = 268435456)"""
        )
    return con


def run_query(
    sql: str, parquet: Path | None, archive: Path | None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = connect(parquet, archive)
    try:
        result = con.execute(sql)
        columns = [d[0] for d in result.description or []]
        return columns, result.fetchall()
    except duckdb.Error as exc:
        views = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        ]
        raise ArchiveError(
            f"query failed: {exc}\n(views: {', '.join(sorted(views)) or 'none'})"
        ) from None
    finally:
        con.close()
