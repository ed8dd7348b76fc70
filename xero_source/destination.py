"""The raw tables' destination: one PostgreSQL dataset that every tenant's pipeline loads.

Each tenant has a pipeline of its own (its own incremental state), and all of them load the same
`raw_xero` tables. dlt makes a dataset's tables when a pipeline's schema is not yet stored there: it
looks at what exists, then creates what is missing. Two tenants' first loads at the same moment both
saw nothing and both created the tables, and one failed on PostgreSQL's catalogue
(`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`); two tenants bringing
the same new column would fail alike. Here a dataset's schema changes are made one at a time, under a
PostgreSQL advisory lock held from the look to the commit, so the second sees what the first made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import dlt
from dlt.common.schema.typing import TSchemaTables
from dlt.destinations.impl.postgres.postgres import PostgresClient

_LOCK = "SELECT pg_advisory_{}(hashtextextended(%s, 0))"


class _SchemaChangesOneAtATime(PostgresClient):
    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        name = f"dlt schema of {self.sql_client.dataset_name}"  # the staging datasets are per tenant
        self.sql_client.execute_sql(_LOCK.format("lock"), name)
        try:
            yield
        finally:
            self.sql_client.execute_sql(_LOCK.format("unlock"), name)

    def initialize_storage(self, truncate_tables: Iterable[str] | None = None) -> None:
        with self._schema_lock():
            super().initialize_storage(truncate_tables)

    def update_stored_schema(self, only_tables: Iterable[str] | None = None,
                             expected_update: TSchemaTables | None = None,
                             force: bool = False) -> TSchemaTables | None:
        with self._schema_lock():
            return super().update_stored_schema(only_tables, expected_update, force)


class shared_postgres(dlt.destinations.postgres):  # noqa: N801 (dlt names destinations in lower case)
    """dlt's PostgreSQL destination, for many pipelines that load one dataset."""

    def __init__(self, *args: Any, destination_name: str = "postgres", **kwargs: Any) -> None:
        # Named as dlt's own, so configuration sections and traces read as before.
        super().__init__(*args, destination_name=destination_name, **kwargs)

    @property
    def client_class(self) -> type[PostgresClient]:
        return _SchemaChangesOneAtATime
