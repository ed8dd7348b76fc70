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
from pathlib import Path

from dagster_dbt import DbtProject

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


def _target_database() -> str:
    """The database the manifest's relation names point at: the UI shows them as each asset's
    storage, so parse for the database this process will build, not whichever one parsed last."""
    try:
        return dbt_connection_env()["DBT_PG_DATABASE"]
    except SettingsError:  # no DATABASE_URL (e.g. `dagster definitions validate`)
        return os.environ.get("DBT_PG_DATABASE", "postgres")


def _is_fresh(manifest: Path, project_dir: Path, database: str) -> bool:
    marker = manifest.parent / ".parsed_for_database"
    return (manifest.exists() and manifest.stat().st_mtime >= _newest_source_mtime(project_dir)
            and marker.exists() and marker.read_text() == database)


def ensure_manifest(project: DbtProject = xero_dbt_project) -> Path:
    """Run `dbt parse` when the manifest is missing or stale; return its path."""
    manifest = project.manifest_path
    database = _target_database()
    if _is_fresh(manifest, project.project_dir, database):
        return manifest
    # Several processes import the definitions at once (webserver, daemon, runs, `xero-elt sync`
    # for two tenants): one parses, the others wait for it and then find the manifest fresh.
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.parent / ".parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_fresh(manifest, project.project_dir, database):
            return manifest
        result = subprocess.run(
            [DBT_EXECUTABLE, "parse", "--project-dir", str(project.project_dir), "--profiles-dir",
             str(project.profiles_dir), "--quiet"],
            capture_output=True, text=True,
            env={**os.environ, **TELEMETRY_OFF, "DBT_PG_DATABASE": database},
        )
        if result.returncode == 0:
            (manifest.parent / ".parsed_for_database").write_text(database)
    if result.returncode != 0 or not manifest.exists():
        raise RuntimeError(f"dbt parse failed for {project.project_dir}:\n{result.stdout}\n{result.stderr}")
    return manifest

