-- Invoices whose latest version does not fit the canonical table's types, with the reason: kept
-- here instead of being truncated or dropped. A version that fits replaces it in `invoices`.
{{ config(materialized='view') }}

select
    tenant_id,
    'Invoices'::text                                   as endpoint,
    invoice_id                                         as xero_invoice_id,  -- as sent: never cut
    invoice_number,
    status,
    quarantine_reason                                  as reason,
    xero_updated_date_utc,
    (to_timestamp(_dlt_load_id::numeric) at time zone 'UTC')::timestamp as quarantined_at
from {{ ref('stg_xero__invoices') }}
where quarantine_reason is not null
