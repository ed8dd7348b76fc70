-- One row per credit note (latest fetched version), typed. Deleted ones stay, flagged.
with latest as (
    {{ latest_version(source('xero', 'credit_notes'), 'credit_note_id') }}
)

select
    tenant_id::varchar(255)                      as tenant_id,
    credit_note_id::uuid                         as credit_note_id,
    credit_note_number::text                     as credit_note_number,
    type::text                                   as credit_note_type,
    status::text                                 as status,
    status = 'DELETED'                           as is_deleted,
    (contact ->> 'ContactID')::uuid              as contact_id,
    reference::text                              as reference,
    (date at time zone 'UTC')::date              as issue_date,
    currency_code::varchar(3)                    as currency_code,
    coalesce(currency_rate, 1)::numeric(19, 6)   as currency_rate,
    sub_total::numeric(18, 2)                    as subtotal,
    total_tax::numeric(18, 2)                    as total_tax,
    total::numeric(18, 2)                        as total,
    coalesce(remaining_credit, 0)::numeric(18, 2) as remaining_credit,
    allocations::jsonb                           as allocations,
    updated_date_utc::timestamptz                as updated_at
from latest
