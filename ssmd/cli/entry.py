"""The `ssmd` console script: catch stop signals first, then import the rest."""

from __future__ import annotations

import sys

from ssmd.signals import catch_early_signals


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        catch_early_signals()
    from ssmd.cli.main import main as cli_main

    return cli_main()
