-- The organisation behind each tenant: base currency, time zone, financial year end.
-- Fetched on every sync; a row is rewritten only when something in it changed, so the invoices
-- that depend on it (base currency) are rebuilt only then.
{{ config(
    unique_key=['tenant_id'],
    indexes=[{'columns': ['tenant_id'], 'unique': True}, {'columns': ['_dlt_load_id']}],
) }}

with changed as (
    {{ changed_rows(source('xero', 'organisation')) }}
),

latest as (
    {{ latest_version('changed', 'tenant_id', order_column='_dlt_load_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                as tenant_id,
        organisation_id::uuid                  as organisation_id,
        name::text                             as organisation_name,
        legal_name::text                       as legal_name,
        base_currency::varchar(3)              as base_currency,
        country_code::text                     as country_code,
        timezone::text                         as timezone,
        financial_year_end_day::integer        as financial_year_end_day,
        financial_year_end_month::integer      as financial_year_end_month,
        short_code::text                       as short_code,
        organisation_status::text              as organisation_status,
        _dlt_load_id::text                     as _dlt_load_id
    from latest
)

select * from typed
{% if is_incremental() %}
where not exists (
    select 1 from {{ this }} as built
    where built.tenant_id = typed.tenant_id and {{ same_content('built', 'typed') }}
)
{% endif %}
