"""The embedded PostgreSQL: starts, is reused, stops, and never loosens the user's folders."""

from __future__ import annotations

import os
import shutil
import stat

import psycopg

from orchestration.local_postgres import LocalPostgres


def modes(path):
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


def test_start_reuse_stop_in_a_private_folder(tmp_path):
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    before = modes(private)
    server = LocalPostgres(private / ".local")
    try:
        url = server.ensure_running()
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.ensure_running() == url  # reused, same port
        if os.geteuid() == 0:
            # PostgreSQL runs as another user, who cannot enter a 0700 folder: the data goes to
            # /var/tmp instead of chmodding the user's folders.
            assert str(server.pgdata).startswith("/var/tmp/xero-elt/")
        else:
            assert server.pgdata == private / ".local" / "pgdata"
        assert modes(private) == before
    finally:
        assert server.stop()
        if server.base_dir != server.local_dir:
            shutil.rmtree(server.base_dir, ignore_errors=True)
    assert not server.is_running()
