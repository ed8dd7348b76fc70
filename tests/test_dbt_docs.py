"""`xero-elt dbt docs generate` (the README's way to the dbt docs) works on a built database, and
every model and column is described."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from orchestration.settings import DBT_PROJECT_DIR

XERO_ELT = str(Path(sys.executable).with_name("xero-elt"))


def test_every_model_and_column_is_described():
    described: dict[str, dict] = {}
    for path in (DBT_PROJECT_DIR / "models").rglob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            described[model["name"]] = model
    sql_models = {p.stem for p in (DBT_PROJECT_DIR / "models").rglob("*.sql")}
    assert sql_models == set(described), sql_models ^ set(described)
    for name, model in described.items():
        assert model.get("description"), name
        assert model.get("columns"), name
        for column in model["columns"]:
            assert column.get("description"), (name, column["name"])


def test_dbt_docs_generate_from_the_cli(migrated_database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": migrated_database_url, "XERO_ELT_LOCAL_DIR": str(tmp_path)}
    target = tmp_path / "target"
    result = subprocess.run([XERO_ELT, "dbt", "docs", "generate", "--target-path", str(target)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    catalog = json.loads((target / "catalog.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    assert "model.xero_elt.invoices" in manifest["nodes"]
    assert manifest["nodes"]["model.xero_elt.invoices"]["description"]
    assert "nodes" in catalog
