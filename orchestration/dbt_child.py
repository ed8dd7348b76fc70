"""`xero-elt-dbt`: dbt, tied to the process that started it.

dagster-dbt runs dbt as a child process. If the run worker is killed, an ordinary child would
live on, still building, while the analytics lock its parent held is already free: the next build
would run beside it. This ties itself to its parent (see `lifetime`), then becomes dbt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from orchestration.lifetime import die_with_parent


def main() -> None:
    die_with_parent()
    dbt = str(Path(sys.executable).with_name("dbt"))
    os.execv(dbt, [dbt, *sys.argv[1:]])  # noqa: S606 - the venv's own dbt


if __name__ == "__main__":
    main()
