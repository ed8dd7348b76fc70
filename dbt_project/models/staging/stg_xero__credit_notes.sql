-- One row per credit note (latest fetched version), typed. Deleted ones stay, flagged.
{{ config(
    unique_key=['tenant_id', 'credit_note_id'],
    indexes=[{'columns': ['tenant_id', 'credit_note_id'], 'unique': True}, {'columns': ['_dlt_load_id']}],
) }}

with changed as (
    {{ changed_rows(source('xero', 'credit_notes')) }}
),

latest as (
    {{ latest_version('changed', 'credit_note_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                          as tenant_id,
        credit_note_id::text                             as credit_note_id,
        credit_note_number::text                         as credit_note_number,
        type::text                                       as credit_note_type,
        status::text                                     as status,
        status = 'DELETED'                               as is_deleted,
        {{ safe_uuid("contact ->> 'ContactID'") }}       as contact_id,
        reference::text                                  as reference,
        (date at time zone 'UTC')::date                  as credit_note_date,
        currency_code::text                              as currency_code,
        currency_rate::numeric                           as currency_rate,
        sub_total::numeric                               as sub_total,
        total_tax::numeric                               as total_tax,
        total::numeric                                   as total,
        coalesce(remaining_credit, 0)::numeric           as remaining_credit,
        allocations::jsonb                               as allocations,
        (updated_date_utc at time zone 'UTC')::timestamp as xero_updated_date_utc,
        _dlt_load_id::text                               as _dlt_load_id
    from latest
)

select * from typed
{{ new_versions_only('typed', 'credit_note_id') }}
