{#-
  Incremental by design: a dbt run processes the raw record versions of the dlt loads that no
  earlier successful run processed, for every tenant at once.

  `staging.dbt_load_batches` lists every completed dlt load (raw_xero._dlt_loads, status 0) that a
  run has claimed. A run claims, at its start, every load not yet done; each incremental model
  reads only raw rows of claimed, not-done loads (`pending_loads()`); when every node of the run
  succeeded, the claimed loads are marked done. A run that failed leaves them pending, so the next
  run processes them again (every model's merge is idempotent). The orchestrator runs one dbt
  build at a time (a PostgreSQL advisory lock), so "claimed and not done" is this run's batch.

  A run that built only some models (--select) processes the pending loads for them, but does not
  mark the loads done: the models it did not run have not seen them yet.
-#}

{#- In the staging models' schema (dbt_project.yml: staging). -#}
{% macro load_batches_relation() -%}
  staging.dbt_load_batches
{%- endmacro %}

{% macro manages_load_batches() -%}
  {{ return(execute and flags.WHICH in ('run', 'build')) }}
{%- endmacro %}

{#- The loads this run processes, as a subquery for `where _dlt_load_id in …`. -#}
{% macro pending_loads() -%}
  (select load_id from {{ load_batches_relation() }} where done_at is null)
{%- endmacro %}

{% macro claim_pending_loads() %}
  {%- if manages_load_batches() -%}
    {%- set raw_loads = adapter.get_relation(database=target.database, schema=var('raw_schema'),
                                              identifier='_dlt_loads') -%}
    create schema if not exists staging;
    create table if not exists {{ load_batches_relation() }} (
        load_id text primary key,
        invocation_id text not null,
        claimed_at timestamptz not null default now(),
        done_at timestamptz
    );
    {%- if raw_loads %}
    insert into {{ load_batches_relation() }} (load_id, invocation_id)
    select load_id, '{{ invocation_id }}' from {{ raw_loads }} where status = 0
    on conflict (load_id) do nothing;
    update {{ load_batches_relation() }} set invocation_id = '{{ invocation_id }}'
    where done_at is null;
    {%- endif %}
    {{ index_raw_tables() }}
  {%- else -%}
    select 1
  {%- endif -%}
{% endmacro %}

{#- Every raw table is read by load id, and the KPIs look up a changed record's earlier versions
    by its key (meta.record_id in _xero__sources.yml): index both (once; dlt creates the tables,
    not dbt). The key's index is made with the table since it is also each load's merge key
    (xero_source/destination.py, the same name, with updated_date_utc after the key): this makes it
    only for a table made before that. dlt itself, at the start of every tenant's load, reads that tenant's latest state:
    `_dlt_pipeline_state` by pipeline name joined to `_dlt_loads` by load id. Both tables gain a row
    per load of every tenant, so unindexed that look-up grew with the fleet's whole history. -#}
{% macro index_raw_tables() %}
  {%- for table, columns in [('_dlt_pipeline_state', 'pipeline_name, _dlt_load_id'), ('_dlt_loads', 'load_id')] -%}
    {%- set rel = adapter.get_relation(database=target.database, schema=var('raw_schema'), identifier=table) -%}
    {%- if rel %}
    create index if not exists {{ table }}__lookup_idx on {{ rel }} ({{ columns }});
    {%- endif -%}
  {%- endfor -%}
  {%- for node in graph.sources.values() if node.source_name == 'xero' -%}
    {%- set rel = adapter.get_relation(database=target.database, schema=node.schema,
                                       identifier=node.identifier) -%}
    {%- if rel %}
    create index if not exists {{ node.identifier }}__dlt_load_id_idx on {{ rel }} (_dlt_load_id);
    {%- if node.meta.record_id %}
    create index if not exists {{ node.identifier }}__record_idx on {{ rel }} (tenant_id, {{ node.meta.record_id }});
    {%- endif -%}
    {%- endif -%}
  {%- endfor -%}
{% endmacro %}

{% macro finish_load_batch(results) %}
  {%- if manages_load_batches() -%}
    {%- set failed = results | selectattr('status', 'in', ['error', 'fail', 'skipped', 'runtime error'])
                             | list -%}
    {%- set built = results | selectattr('node.resource_type', 'equalto', 'model')
                            | selectattr('status', 'equalto', 'success') | map(attribute='node.unique_id')
                            | list -%}
    {%- set models = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
                                          | map(attribute='unique_id') | list -%}
    {%- set missed = models | reject('in', built) | list -%}
    {%- if failed | length == 0 and missed | length == 0 -%}
      update {{ load_batches_relation() }} set done_at = now()
      where done_at is null and invocation_id = '{{ invocation_id }}'
    {%- else -%}
      {#- a node failed, or a model did not run: the batch stays pending for the next run -#}
      select 1
    {%- endif -%}
  {%- else -%}
    select 1
  {%- endif -%}
{% endmacro %}

{#- Raw rows this run reads: every row on a full build, else the pending loads' rows. -#}
{% macro changed_rows(relation) -%}
  select * from {{ relation }}
  {%- if is_incremental() %} where _dlt_load_id in {{ pending_loads() }}{% endif %}
{%- endmacro %}

{#- The latest version of each record among `rows` (a CTE name); raw keeps one row per version. -#}
{% macro latest_version(rows, id_column, order_column='updated_date_utc') -%}
  select distinct on (tenant_id, {{ id_column }}) *
  from {{ rows }}
  order by tenant_id, {{ id_column }}, {{ order_column }} desc nulls last, _dlt_load_id desc
{%- endmacro %}

{#- The guard of a versioned staging model: keep a record's row only when it is news, i.e. the
    built row is older, or as old but different. dlt upserts a version that a sync fetched again
    (the If-Modified-Since overlap, a full refresh) in place, with the new load's id: unchanged, it
    stays out of this run's changes, so nothing downstream is rebuilt for it. Changed with the same
    UpdatedDateUTC (Xero's silent changes, which a full refresh finds), it is news. `rows` is the
    final CTE, with the model's columns. -#}
{% macro new_versions_only(rows, id_column) -%}
  {%- if is_incremental() %}
where not exists (
    select 1 from {{ this }} as built
    where built.tenant_id = {{ rows }}.tenant_id and built.{{ id_column }} = {{ rows }}.{{ id_column }}
      and (built.xero_updated_date_utc > {{ rows }}.xero_updated_date_utc
           or (built.xero_updated_date_utc = {{ rows }}.xero_updated_date_utc
               and {{ same_content('built', rows) }}))
)
  {%- endif %}
{%- endmacro %}

{#- Two rows of a staging model hold the same record content (whichever load brought them). -#}
{% macro same_content(built, rows) -%}
  to_jsonb({{ built }}) - '_dlt_load_id' = to_jsonb({{ rows }}) - '_dlt_load_id'
{%- endmacro %}
