-- The chart of accounts: one row per account (latest fetched version).
{{ config(
    unique_key=['tenant_id', 'account_id'],
    indexes=[{'columns': ['tenant_id', 'account_id'], 'unique': True}, {'columns': ['_dlt_load_id']}],
) }}

with changed as (
    {{ changed_rows(source('xero', 'accounts')) }}
),

latest as (
    {{ latest_version('changed', 'account_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                          as tenant_id,
        account_id::uuid                                 as account_id,
        code::text                                       as account_code,
        name::text                                       as account_name,
        type::text                                       as account_type,
        class::text                                      as account_class,
        status::text                                     as status,
        tax_type::text                                   as tax_type,
        currency_code::text                              as currency_code,
        (updated_date_utc at time zone 'UTC')::timestamp as xero_updated_date_utc,
        _dlt_load_id::text                               as _dlt_load_id
    from latest
)

select * from typed
{{ new_versions_only('typed', 'account_id') }}
