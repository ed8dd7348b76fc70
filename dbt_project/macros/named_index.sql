{#- An index with a fixed name (the seed's `idx_invoices_status`, …), for a post-hook. Index names
    are per schema, and on a full refresh dbt builds a new table beside the old one, swaps them and
    drops the old one (its backup) only after the hooks ran: the backup still holds the name, so a
    bare `create index if not exists` would skip and the drop would take the index with it. The
    name is taken back from any other table first. -#}
{% macro named_index(name, columns, where=none) -%}
  do $$ begin
    if exists (select 1 from pg_indexes where schemaname = '{{ this.schema }}' and indexname = '{{ name }}'
               and tablename <> '{{ this.identifier }}') then
      drop index {{ adapter.quote(this.schema) }}.{{ adapter.quote(name) }};
    end if;
  end $$;
  create index if not exists {{ name }} on {{ this }} ({{ columns }}){% if where %} where {{ where }}{% endif %}
{%- endmacro %}
