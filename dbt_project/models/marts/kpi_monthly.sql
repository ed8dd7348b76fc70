-- The coaching KPIs, one row per tenant, calendar month and KPI, in the organisation's base
-- currency (each document's amount divided by its own CurrencyRate), money rounded to the cent
-- once, at the end of each sum. Definitions, in a coach's words: models/marts/kpi_dictionary.md.
--
-- Incremental, set-based across tenants. A month's KPIs depend only on documents dated up to its
-- "as of" day (the month's last day, or today), so a run recomputes, per tenant:
--   - from the earliest month that any version (old or new) of a document in this run's loads
--     touches: its date, its payment or allocation dates, its full payment;
--   - every month, when the organisation changed (its base currency converts everything);
--   - from the month of its last build, when that was before today (the as-of day moved: the
--     current month's receivables age every day, and a new month begins).
-- A changed tenant's months before its (new) first month, or all of them when nothing counts any
-- more, are deleted by the post-hook: a full build would not have them.
-- Tenants with none of these are not read at all. Each aggregate is grouped first and expanded
-- only over the months it can reach, so the work grows with documents, not documents x months.
-- Read only when incremental, so declared for the parser:
-- depends_on: {{ ref('stg_xero__invoices') }}
-- depends_on: {{ source('xero', 'invoices') }}
-- depends_on: {{ source('xero', 'payments') }}
-- depends_on: {{ source('xero', 'credit_notes') }}
{{ config(
    unique_key=['tenant_id', 'period', 'kpi'],
    indexes=[{'columns': ['tenant_id', 'period', 'kpi'], 'unique': True}],
    post_hook=["{{ drop_kpi_months_before_first_activity() }}"],
) }}

{%- set today = "(now() at time zone 'UTC')::date" %}

with
{%- if is_incremental() %}
-- The earliest day each tenant's changed documents touch, over all their raw versions: an edit
-- can move a document out of a month as well as into one. Changed: a new version in this run's
-- loads (the staging models keep only those).
touched as (
    select r.tenant_id, least(r.date, r.fully_paid_on_date) as touched_at
    from {{ source('xero', 'invoices') }} as r
    where (r.tenant_id, r.invoice_id) in (
        select tenant_id, invoice_id from {{ ref('stg_xero__invoices') }}
        where _dlt_load_id in {{ pending_loads() }})
    union all
    select r.tenant_id, r.date
    from {{ source('xero', 'payments') }} as r
    where (r.tenant_id, r.payment_id) in (
        select tenant_id, payment_id::text from {{ ref('stg_xero__payments') }}
        where _dlt_load_id in {{ pending_loads() }})
    union all
    select r.tenant_id, least(r.date, (select min({{ xero_json_date("a ->> 'Date'") }})
                                       from jsonb_array_elements(coalesce(r.allocations::jsonb, '[]'::jsonb)) as a))
    from {{ source('xero', 'credit_notes') }} as r
    where (r.tenant_id, r.credit_note_id) in (
        select tenant_id, credit_note_id from {{ ref('stg_xero__credit_notes') }}
        where _dlt_load_id in {{ pending_loads() }})
    union all
    select tenant_id, '-infinity'::timestamptz  -- content changed (see stg_xero__organisation)
    from {{ ref('stg_xero__organisation') }} where _dlt_load_id in {{ pending_loads() }}
),

built as (
    select tenant_id, max(computed_on) as computed_on
    from {{ this }} group by tenant_id
),

recompute as (  -- per tenant, the first month this run recomputes
    select tenant_id, min(from_period) as from_period
    from (
        select tenant_id, date_trunc('month', min(touched_at) at time zone 'UTC')::date as from_period
        from touched group by tenant_id
        union all
        select tenant_id, date_trunc('month', computed_on)::date
        from built where computed_on < {{ today }}
    ) as reasons
    group by tenant_id
),
{%- endif %}

documents as (  -- sales invoices and bills that count: AUTHORISED and PAID only
    select
        i.tenant_id, i.xero_connection_id, i.xero_invoice_id, i.invoice_type, i.contact_id,
        i.invoice_date, i.due_date, i.paid_date, i.amount as total, i.sub_total, i.currency_code,
        i.base_currency,
        case when i.currency_code = i.base_currency then 1 else nullif(i.currency_rate, 0) end as rate,
        {%- if is_incremental() %}
        r.from_period
    from {{ ref('invoices') }} as i
    join recompute as r on r.tenant_id = i.tenant_id
        {%- else %}
        '-infinity'::date as from_period
    from {{ ref('invoices') }} as i
        {%- endif %}
    where i.status in ('AUTHORISED', 'PAID') and i.invoice_type in ('ACCREC', 'ACCPAY')
),

sales as (select * from documents where invoice_type = 'ACCREC'),

credit_notes as (
    select
        c.tenant_id, c.credit_note_type, c.credit_note_date, c.sub_total, c.allocations,
        case when c.currency_code = o.base_currency then 1 else nullif(c.currency_rate, 0) end as rate
    from {{ ref('stg_xero__credit_notes') }} as c
    left join {{ ref('stg_xero__organisation') }} as o on o.tenant_id = c.tenant_id
    where c.status in ('AUTHORISED', 'PAID')
    {%- if is_incremental() %}
      and c.tenant_id in (select tenant_id from recompute)
    {%- endif %}
),

payments as (  -- on sales invoices; converted at the payment's own rate for cash collected
    select
        p.tenant_id, p.invoice_id as xero_invoice_id, p.payment_date, p.amount,
        p.amount / case when d.currency_code = d.base_currency then 1
                        else nullif(p.currency_rate, 0) end as amount_base
    from {{ ref('stg_xero__payments') }} as p
    join sales as d on d.tenant_id = p.tenant_id and d.xero_invoice_id = p.invoice_id
    where p.status = 'AUTHORISED'
),

-- What settles a sales invoice, in the invoice's currency, each on its own date: its payments
-- and the credit allocated to it; as (day, amount) arrays per invoice, read in place below.
settlements as (
    select tenant_id, xero_invoice_id, array_agg(settled_on) as settled_on, array_agg(amount) as amount,
           max(settled_on) as last_settled_on
    from (
        select tenant_id, xero_invoice_id, payment_date as settled_on, amount from payments
        union all
        select
            c.tenant_id,
            a -> 'Invoice' ->> 'InvoiceID',
            ({{ xero_json_date("a ->> 'Date'") }} at time zone 'UTC')::date,
            (a ->> 'Amount')::numeric
        from credit_notes as c
        cross join lateral jsonb_array_elements(coalesce(c.allocations, '[]'::jsonb)) as a
        where c.credit_note_type = 'ACCRECCREDIT'
    ) as settlement
    group by 1, 2
),

-- Every tenant with a document that counts (a sales invoice, a bill or a customer credit note),
-- from its first month.
tenants as (
    select f.tenant_id, c.id as xero_connection_id, o.base_currency, f.first_period,
           {{ "r.from_period" if is_incremental() else "'-infinity'::date" }} as from_period
    from ({{ kpi_first_periods("select tenant_id from recompute" if is_incremental() else none) }}) as f
    {%- if is_incremental() %}
    join recompute as r on r.tenant_id = f.tenant_id
    {%- endif %}
    left join {{ source('app', 'xero_connections') }} as c on c.tenant_id = f.tenant_id
    left join {{ ref('stg_xero__organisation') }} as o on o.tenant_id = f.tenant_id
),

-- Which (tenant, month) pairs this run computes.
scope as (
    select t.tenant_id, t.xero_connection_id, t.base_currency, m.period::date as period
    from tenants as t
    cross join lateral generate_series(greatest(t.first_period, t.from_period),
                                       date_trunc('month', {{ today }})::date, interval '1 month') as m(period)
),

-- Below, each document is expanded only over the months it can reach (from the tenant's first
-- month to recompute, up to the current month) and grouped by (tenant, month); `monthly` keeps
-- the months in scope. A month's "as of" day is its last day, or today for the current month.
{%- set this_month = "date_trunc('month', " ~ today ~ ")" %}
{%- set as_of_p = "least((p + interval '1 month - 1 day')::date, " ~ today ~ ")" %}

sales_month as (
    select tenant_id, date_trunc('month', invoice_date)::date as period,
           sum(sub_total / rate) as revenue_invoiced,
           count(*) as invoices_issued,
           count(distinct contact_id) as active_clients
    from sales group by 1, 2
),

bills_month as (
    select tenant_id, date_trunc('month', invoice_date)::date as period, sum(sub_total / rate) as bills
    from documents where invoice_type = 'ACCPAY' group by 1, 2
),

credit_month as (
    select tenant_id, date_trunc('month', credit_note_date)::date as period,
           sum(sub_total / rate) as credit_notes_issued
    from credit_notes where credit_note_type = 'ACCRECCREDIT' group by 1, 2
),

cash_month as (
    select tenant_id, date_trunc('month', payment_date)::date as period, sum(amount_base) as cash_collected
    from payments group by 1, 2
),

-- Each sales invoice still open at a month's "as of" day: Total less what settled it by then.
-- An invoice can only be open from its own month to the month of its last settlement, when it is
-- PAID (its FullyPaidOnDate, or a later-dated payment or allocation: Xero takes back-dated and
-- forward-dated ones), so only those months are expanded. Materialised: `outstanding` is read
-- by every bucket below.
open_invoices as materialized (
    select d.tenant_id, m.period, m.as_of, d.due_date, d.rate,
           case when x.settled_on is null then d.total
                else d.total - coalesce((select sum(u.amount)
                                         from unnest(x.settled_on, x.amount) as u(settled_on, amount)
                                         where u.settled_on <= m.as_of), 0)
           end as outstanding
    from sales as d
    left join settlements as x on x.tenant_id = d.tenant_id and x.xero_invoice_id = d.xero_invoice_id
    cross join lateral (
        select p::date as period, {{ as_of_p }} as as_of
        from generate_series(greatest(date_trunc('month', d.invoice_date), d.from_period),
                             least(date_trunc('month', case when d.paid_date is null then {{ today }}
                                                            else greatest(d.paid_date, x.last_settled_on) end),
                                   {{ this_month }}),
                             interval '1 month') as p
    ) as m
    where d.invoice_date <= m.as_of
),

receivables_month as (
    select tenant_id, period,
           sum(outstanding / rate) as receivables_outstanding,
           sum(outstanding / rate) filter (where as_of - due_date <= 0 or due_date is null)
               as receivables_current,
           sum(outstanding / rate) filter (where as_of - due_date between 1 and 30) as receivables_1_30,
           sum(outstanding / rate) filter (where as_of - due_date between 31 and 60) as receivables_31_60,
           sum(outstanding / rate) filter (where as_of - due_date between 61 and 90) as receivables_61_90,
           sum(outstanding / rate) filter (where as_of - due_date > 90) as receivables_90_plus,
           sum(outstanding / rate) filter (where as_of - due_date > 0) as overdue_amount,
           count(*) filter (where as_of - due_date > 0 and outstanding <> 0) as overdue_count
    from open_invoices
    group by 1, 2
),

-- Σ Total of sales invoices dated in the 90 days ending the "as of" day: a day's sales reach the
-- months whose as-of day is within 89 days after it.
trailing_sales as (
    select d.tenant_id, m.period, sum(d.total) as sales_90_days
    from (select tenant_id, invoice_date, max(from_period) as from_period, sum(total / rate) as total
          from sales group by 1, 2) as d
    cross join lateral (
        select p::date as period, {{ as_of_p }} as as_of
        from generate_series(greatest(date_trunc('month', d.invoice_date), d.from_period),
                             least(date_trunc('month', d.invoice_date + 89), {{ this_month }}),
                             interval '1 month') as p
    ) as m
    where d.invoice_date > m.as_of - 90 and d.invoice_date <= m.as_of
    group by 1, 2
),

paid_month as (
    select tenant_id, date_trunc('month', paid_date)::date as period,
           avg(paid_date - invoice_date) as days_to_pay_avg,
           percentile_cont(0.5) within group (order by paid_date - invoice_date) as days_to_pay_median
    from sales where paid_date is not null
    group by 1, 2
),

clients_month as (  -- clients whose first sales invoice ever is in the month
    select tenant_id, first_period as period, count(*) as new_clients
    from (select tenant_id, contact_id, min(date_trunc('month', invoice_date))::date as first_period
          from sales where contact_id is not null group by 1, 2) as first_sale
    group by 1, 2
),

-- Each client's revenue over the 12 months ending with the month: a client's month reaches that
-- month and the 11 after it.
client_revenue_12m as (
    select c.tenant_id, m.period::date as period, c.contact_id, sum(c.revenue) as revenue
    from (select tenant_id, contact_id, date_trunc('month', invoice_date) as period,
                 max(from_period) as from_period, sum(sub_total / rate) as revenue
          from sales group by 1, 2, 3) as c
    cross join lateral generate_series(greatest(c.period, c.from_period),
                                       least(c.period + interval '11 months', {{ this_month }}),
                                       interval '1 month') as m(period)
    group by 1, 2, 3
),

concentration as (
    select tenant_id, period,
           max(revenue) / nullif(sum(revenue), 0) as top_client_share,
           sum(revenue) filter (where client_rank <= 5) / nullif(sum(revenue), 0) as top5_client_share
    from (select *, row_number() over (partition by tenant_id, period order by revenue desc, contact_id)
                    as client_rank
          from client_revenue_12m) as ranked
    group by 1, 2
),

-- Revenue net of every month the growth ratios look back to (computed here, not read from the
-- table, so a recomputed month never compares with a stale one): exactly the rounded
-- revenue_invoiced less the rounded credit_notes_issued, as the dictionary defines it.
net_month as (
    select tenant_id, period,
           round(coalesce(sm.revenue_invoiced, 0), 2) - round(coalesce(cm.credit_notes_issued, 0), 2)
               as revenue_net
    from sales_month as sm full join credit_month as cm using (tenant_id, period)
),

monthly as (
    select
        s.tenant_id, s.xero_connection_id, s.base_currency, s.period,
        round(coalesce(sm.revenue_invoiced, 0), 2) as revenue_invoiced,
        round(coalesce(cm.credit_notes_issued, 0), 2) as credit_notes_issued,
        coalesce(sm.invoices_issued, 0) as invoices_issued,
        round(coalesce(bm.bills, 0), 2) as bills,
        round(coalesce(ca.cash_collected, 0), 2) as cash_collected,
        round(coalesce(r.receivables_outstanding, 0), 2) as receivables_outstanding,
        round(coalesce(r.receivables_current, 0), 2) as receivables_current,
        round(coalesce(r.receivables_1_30, 0), 2) as receivables_1_30,
        round(coalesce(r.receivables_31_60, 0), 2) as receivables_31_60,
        round(coalesce(r.receivables_61_90, 0), 2) as receivables_61_90,
        round(coalesce(r.receivables_90_plus, 0), 2) as receivables_90_plus,
        round(coalesce(r.overdue_amount, 0), 2) as overdue_amount,
        coalesce(r.overdue_count, 0) as overdue_count,
        round(coalesce(r.receivables_outstanding, 0) / nullif(ts.sales_90_days, 0) * 90, 2) as dso_days,
        round(pm.days_to_pay_avg, 2) as days_to_pay_avg,
        round(pm.days_to_pay_median::numeric, 2) as days_to_pay_median,
        coalesce(sm.active_clients, 0) as active_clients,
        coalesce(cl.new_clients, 0) as new_clients,
        round(co.top_client_share, 6) as top_client_share,
        round(co.top5_client_share, 6) as top5_client_share,
        coalesce(nm.revenue_net, 0) as revenue_net,
        prev.revenue_net as previous_month_net,
        last_year.revenue_net as last_year_net
    from scope as s
    left join sales_month as sm using (tenant_id, period)
    left join bills_month as bm using (tenant_id, period)
    left join credit_month as cm using (tenant_id, period)
    left join cash_month as ca using (tenant_id, period)
    left join receivables_month as r using (tenant_id, period)
    left join trailing_sales as ts using (tenant_id, period)
    left join paid_month as pm using (tenant_id, period)
    left join clients_month as cl using (tenant_id, period)
    left join concentration as co using (tenant_id, period)
    left join net_month as nm using (tenant_id, period)
    left join net_month as prev
        on prev.tenant_id = s.tenant_id and prev.period = (s.period - interval '1 month')::date
    left join net_month as last_year
        on last_year.tenant_id = s.tenant_id and last_year.period = (s.period - interval '12 months')::date
),

kpis as (
    select m.tenant_id, m.xero_connection_id, m.base_currency, m.period, k.kpi, k.value, k.unit
    from monthly as m
    cross join lateral (values
        ('revenue_invoiced', m.revenue_invoiced, 'currency'),
        ('credit_notes_issued', m.credit_notes_issued, 'currency'),
        ('revenue_net', m.revenue_net, 'currency'),
        ('invoices_issued', m.invoices_issued::numeric, 'count'),
        ('average_invoice_value', round(m.revenue_invoiced / nullif(m.invoices_issued, 0), 2), 'currency'),
        ('bills', m.bills, 'currency'),
        ('cash_collected', m.cash_collected, 'currency'),
        ('receivables_outstanding', m.receivables_outstanding, 'currency'),
        ('receivables_current', m.receivables_current, 'currency'),
        ('receivables_1_30', m.receivables_1_30, 'currency'),
        ('receivables_31_60', m.receivables_31_60, 'currency'),
        ('receivables_61_90', m.receivables_61_90, 'currency'),
        ('receivables_90_plus', m.receivables_90_plus, 'currency'),
        ('overdue_amount', m.overdue_amount, 'currency'),
        ('overdue_count', m.overdue_count::numeric, 'count'),
        ('dso_days', m.dso_days, 'days'),
        ('days_to_pay_avg', m.days_to_pay_avg, 'days'),
        ('days_to_pay_median', m.days_to_pay_median, 'days'),
        ('active_clients', m.active_clients::numeric, 'count'),
        ('new_clients', m.new_clients::numeric, 'count'),
        ('returning_clients', (m.active_clients - m.new_clients)::numeric, 'count'),
        ('top_client_share', m.top_client_share, 'ratio'),
        ('top5_client_share', m.top5_client_share, 'ratio'),
        ('revenue_growth_mom', round((m.revenue_net - m.previous_month_net) / nullif(m.previous_month_net, 0), 6),
         'ratio'),
        ('revenue_growth_yoy', round((m.revenue_net - m.last_year_net) / nullif(m.last_year_net, 0), 6), 'ratio')
    ) as k(kpi, value, unit)
)

select
    tenant_id::varchar(255)                                     as tenant_id,
    xero_connection_id,
    period,
    kpi::varchar(50)                                            as kpi,
    value::numeric                                              as value,
    unit::varchar(10)                                           as unit,
    (case when unit = 'currency' then base_currency end)::varchar(3) as currency,
    {{ today }}                                                 as computed_on
from kpis
