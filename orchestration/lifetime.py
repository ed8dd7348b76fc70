"""Child processes that die with the process that started them.

A sync's extract workers and dbt are children. If their parent is killed (SIGKILL, an OOM kill),
an ordinary child lives on: an extract worker finishes its tenant's run behind the reaper's back,
dbt keeps building while the analytics lock its parent held is already free. On Linux the kernel
can kill a child when its parent dies (PR_SET_PDEATHSIG, kept across exec).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has.

    `parent_pid`: the parent expected (default: whoever it is now). A parent that died before the
    request leaves the child re-parented (to init or a subreaper), so the pid no longer matches.
    """
    if not sys.platform.startswith("linux"):
        return
    expected = parent_pid if parent_pid is not None else os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected:
        sys.exit(f"{os.path.basename(sys.argv[0]) or 'python'}: the process that started it is gone")
