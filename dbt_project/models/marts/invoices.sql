-- The canonical invoices table: every invoice that currently exists in Xero (deleted ones are
-- gone; voided ones stay, with their status), with amounts in invoice and base currency.
select
    invoice_id,
    tenant_id,
    invoice_number,
    invoice_type,
    status,
    contact_id,
    contact_name,
    reference,
    issue_date,
    due_date,
    currency_code,
    currency_rate,
    subtotal,
    total_tax,
    total,
    amount_due,
    amount_paid,
    amount_credited,
    -- Xero's CurrencyRate is invoice-currency units per base-currency unit.
    round(total / nullif(currency_rate, 0), 2)::numeric(18, 2) as total_base,
    updated_at
from {{ ref('stg_xero__invoices') }}
where not is_deleted
  and {{ tenant_condition() }}
