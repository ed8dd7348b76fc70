{#- An amount in the organisation's base currency. Xero's CurrencyRate is document-currency units
    per base-currency unit, so base = amount / rate; a base-currency document is its own amount.
    A foreign document without a rate has no base amount (null, and flagged): never 1:1. Rounded
    to the cent once, here. Expects the document as `s` and its organisation as `o`. -#}
{% macro to_base(amount) -%}
  (case
     when s.currency_code = o.base_currency then {{ amount }}
     when s.currency_rate > 0 then round({{ amount }} / s.currency_rate, 2)
   end)::decimal(18, 2)
{%- endmacro %}

{#- Post-hook of `invoices`: an invoice whose latest version does not fit the canonical types is
    in `invoices_quarantine` instead; drop the older row it replaces, so no stale figure stays. -#}
{% macro drop_quarantined_invoices() %}
  {%- if is_incremental() -%}
    delete from {{ this }} where id in (
      select md5(tenant_id || ':' || invoice_id)::uuid from {{ ref('stg_xero__invoices') }}
      where quarantine_reason is not null and _dlt_load_id in {{ pending_loads() }})
  {%- else -%}
    select 1
  {%- endif -%}
{% endmacro %}

{#- A date inside Xero's JSON as sent ("/Date(1700000000000+0000)/", milliseconds since the epoch,
    UTC), as a timestamptz; null when absent. -#}
{% macro xero_json_date(expression) -%}
  to_timestamp(substring({{ expression }} from '\((-?[0-9]+)')::bigint / 1000.0)
{%- endmacro %}
