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

from orchestration.settings import DBT_PROJECT_DIR, TELEMETRY_OFF

xero_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
# The venv's dbt, whether or not the venv's bin/ is on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))


def _newest_source_mtime(project_dir: Path) -> float:
    files = [p for sub in ("models", "macros", "tests") for p in (project_dir / sub).rglob("*")
             if p.is_file()]
    files += [project_dir / "dbt_project.yml", project_dir / "profiles.yml"]
    return max(p.stat().st_mtime for p in files)


def _is_fresh(manifest: Path, project_dir: Path) -> bool:
    return manifest.exists() and manifest.stat().st_mtime >= _newest_source_mtime(project_dir)


def ensure_manifest(project: DbtProject = xero_dbt_project) -> Path:
    """Run `dbt parse` when the manifest is missing or stale; return its path."""
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
        result = subprocess.run(
            [DBT_EXECUTABLE, "parse", "--project-dir", str(project.project_dir), "--profiles-dir",
             str(project.profiles_dir), "--quiet"],
            capture_output=True, text=True, env={**os.environ, **TELEMETRY_OFF},
        )
    if result.returncode != 0 or not manifest.exists():
        raise RuntimeError(f"dbt parse failed for {project.project_dir}:\n{result.stdout}\n{result.stderr}")
    return manifest

