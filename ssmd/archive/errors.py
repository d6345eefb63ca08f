"""The reading package's one exception tree: every problem with the archive itself."""

from __future__ import annotations


class ArchiveError(Exception):
    """The archive cannot be read as asked (missing day, unreadable manifest, ...)."""


class ArchiveCorrupt(ArchiveError):
    """A file of the archive is truncated, corrupt or not what the manifest says.

    The message names the file; everything before the damage was already yielded.
    """
