{#- Why a value cannot go into the canonical invoices' types as is (null when it can). Nothing is
    ever truncated or rounded to fit: a record that does not fit goes to `invoices_quarantine`,
    with this reason, until a version that fits arrives. -#}
{% macro money_fit(column, canonical_name, precision=12) -%}
  case
    when {{ column }} is null then null
    when abs({{ column }}) >= 1e{{ precision - 2 }} then
      '{{ canonical_name }} ' || {{ column }}::text || ' does not fit DECIMAL({{ precision }},2)'
    when {{ column }} <> round({{ column }}, 2) then
      '{{ canonical_name }} ' || {{ column }}::text || ' has more than 2 decimal places'
  end
{%- endmacro %}

{% macro text_fit(column, canonical_name, max_length) -%}
  case when length({{ column }}) > {{ max_length }} then
    '{{ canonical_name }} is ' || length({{ column }}) || ' characters, over VARCHAR({{ max_length }})'
  end
{%- endmacro %}

{% macro uuid_fit(column, canonical_name) -%}
  case when {{ column }} !~* {{ uuid_pattern() }} then
    '{{ canonical_name }} ' || quote_literal(left({{ column }}, 100)) || ' is not a UUID'
  end
{%- endmacro %}

{#- A UUID from Xero's JSON, or null when the value is not one (never a failed cast for everyone). -#}
{% macro safe_uuid(expression) -%}
  case when ({{ expression }}) ~* {{ uuid_pattern() }} then ({{ expression }})::uuid end
{%- endmacro %}

{% macro uuid_pattern() -%}
  '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
{%- endmacro %}
