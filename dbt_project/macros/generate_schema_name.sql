{#- A model's `schema` config is the schema's whole name (`staging`), not a suffix of the target's
    (`analytics_staging`): analysts see `analytics`, the layers below have names of their own. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
  {{ (custom_schema_name or target.schema) | trim }}
{%- endmacro %}
