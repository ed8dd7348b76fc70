{#- Each tenant's first month with a document that counts: an approved (AUTHORISED or PAID) sales
    invoice, bill or customer credit note. A tenant's KPI months run from it to the current month.
    `tenants`: a query of the tenant ids to look at (all when none). -#}
{% macro kpi_first_periods(tenants=none) -%}
    select tenant_id, min(first_day)::date as first_period
    from (
        select tenant_id, date_trunc('month', min(invoice_date)) as first_day
        from {{ ref('invoices') }}
        where status in ('AUTHORISED', 'PAID') and invoice_type in ('ACCREC', 'ACCPAY')
          {%- if tenants %} and tenant_id in ({{ tenants }}){% endif %}
        group by tenant_id
        union all
        select tenant_id, date_trunc('month', min(credit_note_date))
        from {{ ref('stg_xero__credit_notes') }}
        where status in ('AUTHORISED', 'PAID') and credit_note_type = 'ACCRECCREDIT'
          {%- if tenants %} and tenant_id in ({{ tenants }}){% endif %}
        group by tenant_id
    ) as firsts
    group by tenant_id
{%- endmacro %}

{#- Post-hook of `kpi_monthly`: a tenant whose invoices or credit notes changed in this run may now
    start later (its first document voided, say) or have nothing that counts: delete its months
    before its first month (all of them when there is none), as a full build would not have them. -#}
{% macro drop_kpi_months_before_first_activity() -%}
  {%- if is_incremental() -%}
    {%- set changed -%}
        select tenant_id from {{ ref('stg_xero__invoices') }} where _dlt_load_id in {{ pending_loads() }}
        union
        select tenant_id from {{ ref('stg_xero__credit_notes') }} where _dlt_load_id in {{ pending_loads() }}
    {%- endset %}
    delete from {{ this }} as k
    using (
        select t.tenant_id, coalesce(f.first_period, 'infinity'::date) as first_period
        from ({{ changed }}) as t
        left join ({{ kpi_first_periods(changed) }}) as f on f.tenant_id = t.tenant_id
    ) as keep
    where k.tenant_id = keep.tenant_id and k.period < keep.first_period
  {%- else -%}
    select 1
  {%- endif -%}
{%- endmacro %}
