-- The chart of accounts: one row per account (latest fetched version).
with latest as (
    {{ latest_version(source('xero', 'accounts'), 'account_id') }}
)

select
    tenant_id::varchar(255)        as tenant_id,
    account_id::uuid               as account_id,
    code::text                     as account_code,
    name::text                     as account_name,
    type::text                     as account_type,
    class::text                    as account_class,
    status::text                   as status,
    tax_type::text                 as tax_type,
    currency_code::varchar(3)      as currency_code,
    updated_date_utc::timestamptz  as updated_at
from latest
