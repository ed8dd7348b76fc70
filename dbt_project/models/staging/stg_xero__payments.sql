-- One row per payment (latest fetched version), against an invoice or a credit note.
-- Deleted payments stay, flagged: they no longer count towards what was collected.
with latest as (
    {{ latest_version(source('xero', 'payments'), 'payment_id') }}
)

select
    tenant_id::varchar(255)                      as tenant_id,
    payment_id::uuid                             as payment_id,
    (invoice ->> 'InvoiceID')::uuid              as invoice_id,
    (credit_note ->> 'CreditNoteID')::uuid       as credit_note_id,
    (account ->> 'AccountID')::uuid              as account_id,
    payment_type::text                           as payment_type,
    status::text                                 as status,
    status = 'DELETED'                           as is_deleted,
    (date at time zone 'UTC')::date              as payment_date,
    amount::numeric(18, 2)                       as amount,
    bank_amount::numeric(18, 2)                  as bank_amount,
    coalesce(currency_rate, 1)::numeric(19, 6)   as currency_rate,
    reference::text                              as reference,
    coalesce(is_reconciled, false)               as is_reconciled,
    updated_date_utc::timestamptz                as updated_at
from latest
