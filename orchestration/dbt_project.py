"""The dbt project as Dagster sees it, and its manifest.

`@dbt_assets` reads `manifest.json` at import time. `DbtProject.prepare_if_dev()` only builds it
under `dagster dev`, so this module builds it itself when it is missing or older than the
project's files (tests, CI, `xero-elt`); images build it at build time (see the Dockerfile).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dagster_dbt import DbtProject
from dagster_dbt.core.dbt_cli_invocation import PARTIAL_PARSE_FILE_NAME as PARTIAL_PARSE
from dagster_dbt.core.dbt_cli_invocation import _get_dbt_target_path

from orchestration.settings import DBT_PROJECT_DIR, TELEMETRY_OFF, SettingsError, dbt_connection_env

xero_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
# The venv's dbt, whether or not the venv's bin/ is on PATH, through `xero-elt-dbt` so that it dies
# with the run worker that started it (orchestration/dbt_child.py).
DBT_EXECUTABLE = str(Path(sys.executable).with_name("xero-elt-dbt"))


def _newest_source_mtime(project_dir: Path) -> float:
    files = [p for sub in ("models", "macros", "tests") for p in (project_dir / sub).rglob("*")
             if p.is_file()]
    files += [project_dir / "dbt_project.yml", project_dir / "profiles.yml"]
    return max(p.stat().st_mtime for p in files)


def _is_fresh(manifest: Path, project_dir: Path) -> bool:
    return manifest.exists() and manifest.stat().st_mtime >= _newest_source_mtime(project_dir)


def ensure_manifest(project: DbtProject = xero_dbt_project) -> Path:
    """Run `dbt parse` when the manifest is missing or older than the project's files; return its
    path. What the definitions take from it does not depend on the database (see XeroDbtTranslator),
    so one parse serves every process, whichever database it builds."""
    manifest = project.manifest_path
    if _is_fresh(manifest, project.project_dir):
        return manifest
    # Several processes import the definitions at once (webserver, daemon, runs, `xero-elt sync`
    # for two tenants): one parses, the others wait for it and then find the manifest fresh.
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.parent / ".parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_fresh(manifest, project.project_dir):
            return manifest
        try:
            env = {**os.environ, **TELEMETRY_OFF, **dbt_connection_env()}
        except SettingsError:  # no DATABASE_URL (e.g. `dagster definitions validate`): parse anyway
            env = {**os.environ, **TELEMETRY_OFF}
        result = subprocess.run(
            [DBT_EXECUTABLE, "parse", "--project-dir", str(project.project_dir), "--profiles-dir",
             str(project.profiles_dir), "--target-path", str(project.project_dir / project.target_path),
             "--quiet"],
            capture_output=True, text=True, env=env,
        )
    if result.returncode != 0 or not manifest.exists():
        raise RuntimeError(f"dbt parse failed for {project.project_dir}:\n{result.stdout}\n{result.stderr}")
    return manifest


def keep_partial_parse(invocation_target: Path) -> None:
    """Make a build's parse state the next build's starting point.

    dagster-dbt gives each invocation a target folder of its own, seeded with the partial-parse
    file of the project's target folder. dbt discards that file when the connection profile differs
    (another database), and then parses the whole project again (≈ 10 s). Keeping the newest
    build's file means only the first build on a database pays for that. Atomic, so concurrent
    builds never read half a file; skipped where the folder is read-only (the image's)."""
    built = invocation_target / PARTIAL_PARSE
    if not built.exists():
        return
    shared = Path(_get_dbt_target_path())
    shared = shared if shared.is_absolute() else xero_dbt_project.project_dir / shared
    try:
        shared.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=shared, prefix=".partial_parse.", delete=False) as tmp:
            tmp.write(built.read_bytes())
        os.replace(tmp.name, shared / PARTIAL_PARSE)
    except OSError:
        pass
