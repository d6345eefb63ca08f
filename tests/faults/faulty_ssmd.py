"""`python -m tests.faults.faulty_ssmd run -c CONFIG --role ...`: ssmd on a faulty disk.

The archiver makes every file-system call through the `FileOps` that `start_archiver`
takes as `ops` (a plain `FileOps` unless given). This launcher has `start_archiver` given
a subclass steered by files in the directory named by `$SSMD_FAULT_DIR`, then runs ssmd's
own CLI entry point, so everything else is the production process:

- while `disk-full` exists, `create`, `pwrite` and `fsync` fail with ENOSPC; a `pwrite`
  first writes half its block, as a filling disk may;
- while `fsync-delay` exists, every `fsync` first sleeps for the seconds it holds (a slow
  disk; the sleep is in the archiver's worker thread, where the real fsync blocks).

Each injected ENOSPC is logged to stderr (the process log) as `faulty_ssmd: ENOSPC ...`.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

from ssmd.signals import catch_early_signals

FAULT_DIR_ENV = "SSMD_FAULT_DIR"
DISK_FULL = "disk-full"
FSYNC_DELAY = "fsync-delay"
ENOSPC_MARK = "faulty_ssmd: ENOSPC"


def main() -> int:
    catch_early_signals()  # as ssmd's own entry point does, before the heavy imports

    import ssmd.archiver.service
    from ssmd.archiver.files import FileOps
    from ssmd.archiver.service import ArchiverStatus
    from ssmd.cli.entry import main as ssmd_main

    fault_dir = Path(os.environ[FAULT_DIR_ENV])

    class FaultyFileOps(FileOps):
        def _fail_if_full(self, call: str, path: object) -> None:
            if (fault_dir / DISK_FULL).exists():
                print(f"{ENOSPC_MARK} on {call} {path}", file=sys.stderr, flush=True)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        def create(self, path: Path) -> int:
            self._fail_if_full("create", path)
            return super().create(path)

        def pwrite(self, fd: int, data: bytes, offset: int) -> None:
            if (fault_dir / DISK_FULL).exists():
                super().pwrite(fd, data[: len(data) // 2], offset)
                self._fail_if_full("pwrite", f"fd {fd}")
            super().pwrite(fd, data, offset)

        def fsync(self, fd: int) -> None:
            try:
                delay = float((fault_dir / FSYNC_DELAY).read_text() or 0)
            except FileNotFoundError:
                delay = 0.0
            if delay > 0:
                time.sleep(delay)
            self._fail_if_full("fsync", f"fd {fd}")
            super().fsync(fd)

    # `start_archiver` takes the archiver's FileOps as `ops`; `ssmd run` imports it when
    # it starts the role, so wrapping it here hands every archiver file call to the fault.
    start_archiver = ssmd.archiver.service.start_archiver

    async def start_faulty_archiver(*args: Any, **kwargs: Any) -> ArchiverStatus:
        return await start_archiver(*args, ops=FaultyFileOps(), **kwargs)

    ssmd.archiver.service.start_archiver = start_faulty_archiver
    return ssmd_main()


if __name__ == "__main__":
    raise SystemExit(main())
