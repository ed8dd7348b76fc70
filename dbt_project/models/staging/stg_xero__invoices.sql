-- One row per invoice: its latest fetched version, typed. Deleted invoices stay here (with
-- is_deleted) so downstream models can see deletes; the canonical `invoices` drops them.
-- Xero's dates are midnight UTC: convert at UTC, not in the session's time zone.
with latest as (
    {{ latest_version(source('xero', 'invoices'), 'invoice_id') }}
)

select
    tenant_id::varchar(255)                          as tenant_id,
    invoice_id::uuid                                 as invoice_id,
    invoice_number::text                             as invoice_number,
    type::text                                       as invoice_type,
    status::text                                     as status,
    status = 'DELETED'                               as is_deleted,
    (contact ->> 'ContactID')::uuid                  as contact_id,
    (contact ->> 'Name')::text                       as contact_name,
    reference::text                                  as reference,
    (date at time zone 'UTC')::date                  as issue_date,
    (due_date at time zone 'UTC')::date              as due_date,
    currency_code::varchar(3)                        as currency_code,
    coalesce(currency_rate, 1)::numeric(19, 6)       as currency_rate,
    sub_total::numeric(18, 2)                        as subtotal,
    total_tax::numeric(18, 2)                        as total_tax,
    total::numeric(18, 2)                            as total,
    coalesce(amount_due, 0)::numeric(18, 2)          as amount_due,
    coalesce(amount_paid, 0)::numeric(18, 2)         as amount_paid,
    coalesce(amount_credited, 0)::numeric(18, 2)     as amount_credited,
    updated_date_utc::timestamptz                    as updated_at,
    line_items::jsonb                                as line_items,
    _dlt_load_id::text                               as _dlt_load_id
from latest
