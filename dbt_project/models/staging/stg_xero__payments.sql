-- One row per payment (latest fetched version), against an invoice or a credit note.
-- Deleted payments stay, flagged: they no longer count towards what was collected.
{{ config(
    unique_key=['tenant_id', 'payment_id'],
    indexes=[
      {'columns': ['tenant_id', 'payment_id'], 'unique': True},
      {'columns': ['tenant_id', 'invoice_id']},
      {'columns': ['_dlt_load_id']},
    ],
) }}

with changed as (
    {{ changed_rows(source('xero', 'payments')) }}
),

latest as (
    {{ latest_version('changed', 'payment_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                          as tenant_id,
        payment_id::uuid                                 as payment_id,
        (invoice ->> 'InvoiceID')::text                  as invoice_id,
        (credit_note ->> 'CreditNoteID')::text           as credit_note_id,
        {{ safe_uuid("account ->> 'AccountID'") }}       as account_id,
        payment_type::text                               as payment_type,
        status::text                                     as status,
        status = 'DELETED'                               as is_deleted,
        (date at time zone 'UTC')::date                  as payment_date,
        amount::numeric                                  as amount,
        bank_amount::numeric                             as bank_amount,
        currency_rate::numeric                           as currency_rate,
        reference::text                                  as reference,
        coalesce(is_reconciled, false)                   as is_reconciled,
        (updated_date_utc at time zone 'UTC')::timestamp as xero_updated_date_utc,
        _dlt_load_id::text                               as _dlt_load_id
    from latest
)

select * from typed
{{ new_versions_only('typed', 'payment_id') }}
