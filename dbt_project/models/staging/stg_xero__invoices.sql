-- One row per invoice: its latest fetched version, typed, every status kept (DELETED included).
-- Incremental: reads only the raw versions of the loads this run processes (see load_batches.sql).
-- Xero's dates are midnight UTC: convert at UTC, not in the session's time zone.
{{ config(
    unique_key=['tenant_id', 'invoice_id'],
    indexes=[
      {'columns': ['tenant_id', 'invoice_id'], 'unique': True},
      {'columns': ['_dlt_load_id']},
    ],
    post_hook=["{{ named_index('stg_xero__invoices_quarantined_idx', 'tenant_id', 'quarantine_reason is not null') }}"],
) }}

with changed as (
    {{ changed_rows(source('xero', 'invoices')) }}
),

latest as (
    {{ latest_version('changed', 'invoice_id') }}
),

typed as (
    select
        tenant_id::varchar(255)                          as tenant_id,
        invoice_id::text                                 as invoice_id,
        invoice_number::text                             as invoice_number,
        type::text                                       as invoice_type,
        status::text                                     as status,
        status = 'DELETED'                               as is_deleted,
        (contact ->> 'ContactID')::text                  as contact_id,  -- checked below
        (contact ->> 'Name')::text                       as contact_name,
        reference::text                                  as reference,
        (date at time zone 'UTC')::date                  as invoice_date,
        (due_date at time zone 'UTC')::date              as due_date,
        (fully_paid_on_date at time zone 'UTC')::date    as paid_date,
        currency_code::text                              as currency_code,
        currency_rate::numeric                           as currency_rate,
        sub_total::numeric                               as sub_total,
        total_tax::numeric                               as total_tax,
        total::numeric                                   as total,
        coalesce(amount_due, 0)::numeric                 as amount_due,
        coalesce(amount_paid, 0)::numeric                as amount_paid,
        coalesce(amount_credited, 0)::numeric            as amount_credited,
        line_items::jsonb                                as line_items,
        (updated_date_utc at time zone 'UTC')::timestamp as xero_updated_date_utc,
        _dlt_load_id::text                               as _dlt_load_id
    from latest
),

-- Why the record cannot go into the canonical table as is (null when it can).
checked as (
    select
        typed.*,
        nullif(concat_ws('; ',
            {{ text_fit('invoice_id', 'xero_invoice_id', 255) }},
            {{ text_fit('invoice_number', 'invoice_number', 100) }},
            {{ text_fit('contact_name', 'client_name', 255) }},
            {{ text_fit('status', 'status', 50) }},
            {{ text_fit('invoice_type', 'invoice_type', 20) }},
            {{ uuid_fit('contact_id', 'contact_id') }},
            {{ text_fit('currency_code', 'currency_code', 3) }},
            {{ money_fit('total', 'amount') }},
            {{ money_fit('total_tax', 'tax_amount') }},
            {{ money_fit('sub_total', 'sub_total') }},
            {{ money_fit('amount_due', 'amount_due') }},
            {{ money_fit('amount_paid', 'amount_paid') }},
            {{ money_fit('amount_credited', 'amount_credited') }}
        ), '') as quarantine_reason
    from typed
)

select * from checked
{{ new_versions_only('checked', 'invoice_id') }}
