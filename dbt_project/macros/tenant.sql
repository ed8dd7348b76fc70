{#- The tenant this run is for, as a SQL literal, or none for every tenant. Tenant ids are Xero
    UUIDs; anything else is refused rather than quoted into SQL. -#}
{% macro tenant_literal() %}
  {%- set tenant = var('tenant_id', none) -%}
  {%- if tenant is none or tenant == '' -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if not modules.re.fullmatch('[0-9a-fA-F-]{36}', tenant | string) -%}
    {{ exceptions.raise_compiler_error("var tenant_id must be a Xero tenant UUID, got " ~ tenant) }}
  {%- endif -%}
  {{ return("'" ~ tenant ~ "'") }}
{% endmacro %}

{#- Condition restricting rows to this run's tenant (`true` when unset). Every model must apply
    it: models are delete+insert on tenant_id, so whatever a run selects, it replaces. -#}
{% macro tenant_condition(column='tenant_id') %}
  {%- set literal = tenant_literal() -%}
  {%- if literal is none -%} true {%- else -%} {{ column }} = {{ literal }} {%- endif -%}
{% endmacro %}

{#- Latest version of each record: raw keeps one row per fetched version. -#}
{% macro latest_version(relation, id_column) %}
  select * from (
    select r.*,
      row_number() over (
        partition by r.tenant_id, r.{{ id_column }}
        order by r.updated_date_utc desc, r._dlt_load_id desc
      ) as _version_rank
    from {{ relation }} as r
    where {{ tenant_condition('r.tenant_id') }}
  ) as versions
  where _version_rank = 1
{% endmacro %}

{#- Pre-hook of every model: delete this run's tenant's rows before the model appends their new
    version (nothing on a model's first build). -#}
{% macro clear_tenant_rows() %}
  {%- if is_incremental() -%}
    delete from {{ this }} where {{ tenant_condition() }}
  {%- endif -%}
{% endmacro %}
