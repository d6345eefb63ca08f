"""Reading the archive back (`ssmd data`); the code lives in `ssmd.archive`."""

from __future__ import annotations

from ssmd.archive.store import RecordFilter, days, feeds, iter_lines
from ssmd.archive.verify import DayReport, verify_day

__all__ = ["DayReport", "RecordFilter", "days", "feeds", "iter_lines", "verify_day"]
