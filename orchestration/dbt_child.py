"""`xero-elt-dbt`: dbt, tied to the process that started it.

dagster-dbt runs dbt as a child process. If the run worker is killed (SIGKILL, an OOM kill), an
ordinary child lives on, still building, while the analytics lock its parent held is already free:
the next build would run beside it. On Linux this asks the kernel to kill dbt when its parent
dies (PR_SET_PDEATHSIG, kept across exec), then becomes dbt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def main() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above: do not build
            sys.exit("xero-elt-dbt: the process that started dbt is gone")
    dbt = str(Path(sys.executable).with_name("dbt"))
    os.execv(dbt, [dbt, *sys.argv[1:]])  # noqa: S606 - the venv's own dbt


if __name__ == "__main__":
    main()
