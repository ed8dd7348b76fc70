-- One row per contact (latest fetched version). Archived contacts stay, flagged.
{{ config(
    unique_key=['tenant_id', 'contact_id'],
    indexes=[{'columns': ['tenant_id', 'contact_id'], 'unique': True}, {'columns': ['_dlt_load_id']}],
) }}

with changed as (
    {{ changed_rows(source('xero', 'contacts')) }}
),

latest as (
    {{ latest_version('changed', 'contact_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                          as tenant_id,
        contact_id::uuid                                 as contact_id,
        name::text                                       as contact_name,
        contact_status::text                             as contact_status,
        contact_status = 'ARCHIVED'                      as is_archived,
        coalesce(is_customer, false)                     as is_customer,
        coalesce(is_supplier, false)                     as is_supplier,
        email_address::text                              as email_address,
        account_number::text                             as account_number,
        default_currency::text                           as default_currency,
        (updated_date_utc at time zone 'UTC')::timestamp as xero_updated_date_utc,
        _dlt_load_id::text                               as _dlt_load_id
    from latest
)

select * from typed
{{ new_versions_only('typed', 'contact_id') }}
