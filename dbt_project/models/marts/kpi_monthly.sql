-- The coaching KPIs, one row per tenant, calendar month and KPI, in the organisation's base
-- currency (each document's amount divided by its own CurrencyRate), money rounded to the cent
-- once, at the end of each sum. Definitions, in a coach's words: models/marts/_kpis.yml.
--
-- Incremental, set-based across tenants: a tenant whose documents changed in this run's loads gets
-- every month recomputed; every other tenant only the months whose "as of" day moved since its
-- last build (the current month's receivables age every day, and a new month appears).
-- depends_on: {{ ref('stg_xero__invoices') }}
-- depends_on: {{ ref('stg_xero__payments') }}
-- depends_on: {{ ref('stg_xero__organisation') }}
{{ config(
    unique_key=['tenant_id', 'period', 'kpi'],
    indexes=[{'columns': ['tenant_id', 'period', 'kpi'], 'unique': True}],
) }}

{%- set today = "(now() at time zone 'UTC')::date" %}

with documents as (  -- sales invoices and bills that count: AUTHORISED and PAID only
    select
        tenant_id, xero_connection_id, xero_invoice_id, invoice_type, contact_id, invoice_date,
        due_date, paid_date, amount as total, sub_total, currency_code, base_currency,
        case when currency_code = base_currency then 1 else 1 / nullif(currency_rate, 0) end as to_base
    from {{ ref('invoices') }}
    where status in ('AUTHORISED', 'PAID') and invoice_type in ('ACCREC', 'ACCPAY')
),

credit_notes as (
    select
        c.tenant_id, c.credit_note_type, c.credit_note_date, c.sub_total, c.allocations,
        case when c.currency_code = o.base_currency then 1 else 1 / nullif(c.currency_rate, 0) end
            as to_base
    from {{ ref('stg_xero__credit_notes') }} as c
    left join {{ ref('stg_xero__organisation') }} as o on o.tenant_id = c.tenant_id
    where c.status in ('AUTHORISED', 'PAID')
),

payments as (  -- on sales invoices; converted at the payment's own rate for cash collected
    select
        p.tenant_id, p.invoice_id as xero_invoice_id, p.payment_date, p.amount,
        p.amount * case when d.currency_code = d.base_currency then 1
                        else 1 / nullif(p.currency_rate, 0) end as amount_base
    from {{ ref('stg_xero__payments') }} as p
    join documents as d on d.tenant_id = p.tenant_id and d.xero_invoice_id = p.invoice_id
    where p.status = 'AUTHORISED' and d.invoice_type = 'ACCREC'
),

-- What settles a sales invoice, in the invoice's currency, each on its own date: its payments
-- and the credit allocated to it.
settlements as (
    select tenant_id, xero_invoice_id, payment_date as settled_on, amount from payments
    union all
    select
        c.tenant_id,
        a -> 'Invoice' ->> 'InvoiceID',
        (to_timestamp(substring(a ->> 'Date' from '\((-?[0-9]+)')::bigint / 1000.0) at time zone 'UTC')::date,
        (a ->> 'Amount')::numeric
    from credit_notes as c
    cross join lateral jsonb_array_elements(coalesce(c.allocations, '[]'::jsonb)) as a
    where c.credit_note_type = 'ACCRECCREDIT'
),

tenants as (
    select tenant_id, max(xero_connection_id::text)::uuid as xero_connection_id,
           max(base_currency) as base_currency,
           least(min(date_trunc('month', invoice_date))::date,
                 (select min(date_trunc('month', credit_note_date))::date from credit_notes c
                  where c.tenant_id = d.tenant_id)) as first_period
    from documents as d
    group by tenant_id
),

-- Which (tenant, month) pairs this run computes.
scope as (
    select t.tenant_id, t.xero_connection_id, t.base_currency, m.period::date as period,
           least((m.period + interval '1 month - 1 day')::date, {{ today }}) as as_of
    from tenants as t
    {%- if is_incremental() %}
    left join (select tenant_id, min(period) as built_from, max(computed_on) as computed_on
               from {{ this }} group by tenant_id) as built on built.tenant_id = t.tenant_id
    {%- endif %}
    cross join lateral generate_series(
        {%- if is_incremental() %} least(t.first_period, built.built_from) {%- else %} t.first_period {%- endif %},
        date_trunc('month', {{ today }})::date, interval '1 month') as m(period)
    {%- if is_incremental() %}
    where t.tenant_id in (
            select tenant_id from {{ ref('stg_xero__invoices') }} where _dlt_load_id in {{ pending_loads() }}
            union select tenant_id from {{ ref('stg_xero__payments') }} where _dlt_load_id in {{ pending_loads() }}
            union select tenant_id from {{ ref('stg_xero__credit_notes') }}
                  where _dlt_load_id in {{ pending_loads() }}
            union select tenant_id from {{ ref('stg_xero__organisation') }}
                  where _dlt_load_id in {{ pending_loads() }})
       or built.computed_on is null
       or m.period >= date_trunc('month', built.computed_on)
    {%- endif %}
),

sales_month as (
    select s.tenant_id, s.period,
           sum(d.sub_total * d.to_base) as revenue_invoiced,
           count(d.xero_invoice_id) as invoices_issued,
           count(distinct d.contact_id) as active_clients
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCREC'
                       and date_trunc('month', d.invoice_date) = s.period
    group by 1, 2
),

bills_month as (
    select s.tenant_id, s.period, sum(d.sub_total * d.to_base) as bills
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCPAY'
                       and date_trunc('month', d.invoice_date) = s.period
    group by 1, 2
),

credit_month as (
    select s.tenant_id, s.period, sum(c.sub_total * c.to_base) as credit_notes_issued
    from scope as s
    join credit_notes as c on c.tenant_id = s.tenant_id and c.credit_note_type = 'ACCRECCREDIT'
                          and date_trunc('month', c.credit_note_date) = s.period
    group by 1, 2
),

cash_month as (
    select s.tenant_id, s.period, sum(p.amount_base) as cash_collected
    from scope as s
    join payments as p on p.tenant_id = s.tenant_id and date_trunc('month', p.payment_date) = s.period
    group by 1, 2
),

-- Each sales invoice still open at a month's "as of" day: Total less what settled it by then.
open_invoices as (
    select s.tenant_id, s.period, s.as_of, d.xero_invoice_id, d.due_date, d.to_base,
           d.total - coalesce(sum(x.amount) filter (where x.settled_on <= s.as_of), 0) as outstanding
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCREC'
                       and d.invoice_date <= s.as_of
                       -- fully paid by then: nothing outstanding (a PAID invoice's last settlement
                       -- is on its FullyPaidOnDate)
                       and (d.paid_date is null or d.paid_date > s.as_of)
    left join settlements as x on x.tenant_id = d.tenant_id and x.xero_invoice_id = d.xero_invoice_id
    group by s.tenant_id, s.period, s.as_of, d.xero_invoice_id, d.due_date, d.to_base, d.total
),

receivables_month as (
    select tenant_id, period,
           sum(outstanding * to_base) as receivables_outstanding,
           sum(outstanding * to_base) filter (where as_of - due_date <= 0 or due_date is null)
               as receivables_current,
           sum(outstanding * to_base) filter (where as_of - due_date between 1 and 30) as receivables_1_30,
           sum(outstanding * to_base) filter (where as_of - due_date between 31 and 60) as receivables_31_60,
           sum(outstanding * to_base) filter (where as_of - due_date between 61 and 90) as receivables_61_90,
           sum(outstanding * to_base) filter (where as_of - due_date > 90) as receivables_90_plus,
           sum(outstanding * to_base) filter (where as_of - due_date > 0) as overdue_amount,
           count(*) filter (where as_of - due_date > 0 and outstanding <> 0) as overdue_count
    from open_invoices
    group by 1, 2
),

trailing_sales as (  -- Σ Total of sales invoices dated in the 90 days ending the "as of" day
    select s.tenant_id, s.period, sum(d.total * d.to_base) as sales_90_days
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCREC'
                       and d.invoice_date > s.as_of - 90 and d.invoice_date <= s.as_of
    group by 1, 2
),

paid_month as (
    select s.tenant_id, s.period,
           avg(d.paid_date - d.invoice_date) as days_to_pay_avg,
           percentile_cont(0.5) within group (order by d.paid_date - d.invoice_date) as days_to_pay_median
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCREC'
                       and date_trunc('month', d.paid_date) = s.period
    group by 1, 2
),

first_sale as (
    select tenant_id, contact_id, min(date_trunc('month', invoice_date))::date as first_period
    from documents where invoice_type = 'ACCREC'
    group by 1, 2
),

clients_month as (
    select s.tenant_id, s.period, count(distinct f.contact_id) as new_clients
    from scope as s
    join first_sale as f on f.tenant_id = s.tenant_id and f.first_period = s.period
    group by 1, 2
),

client_revenue_12m as (  -- each client's revenue over the 12 months ending with the month
    select s.tenant_id, s.period, d.contact_id, sum(d.sub_total * d.to_base) as revenue
    from scope as s
    join documents as d on d.tenant_id = s.tenant_id and d.invoice_type = 'ACCREC'
                       and d.invoice_date >= (s.period - interval '11 months')::date
                       and d.invoice_date < (s.period + interval '1 month')::date
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
-- table, so a recomputed month never compares with a stale one).
net_by_month as (
    select d.tenant_id, date_trunc('month', d.invoice_date)::date as period,
           sum(d.sub_total * d.to_base) as amount
    from documents as d where d.invoice_type = 'ACCREC' group by 1, 2
    union all
    select c.tenant_id, date_trunc('month', c.credit_note_date)::date, -sum(c.sub_total * c.to_base)
    from credit_notes as c where c.credit_note_type = 'ACCRECCREDIT' group by 1, 2
),

net_month as (
    select tenant_id, period, round(sum(amount), 2) as revenue_net from net_by_month group by 1, 2
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
