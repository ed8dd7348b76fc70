-- One row per contact (latest fetched version). Archived contacts stay, flagged.
with latest as (
    {{ latest_version(source('xero', 'contacts'), 'contact_id') }}
)

select
    tenant_id::varchar(255)               as tenant_id,
    contact_id::uuid                      as contact_id,
    name::text                            as contact_name,
    contact_status::text                  as contact_status,
    contact_status = 'ARCHIVED'           as is_archived,
    coalesce(is_customer, false)          as is_customer,
    coalesce(is_supplier, false)          as is_supplier,
    email_address::text                   as email_address,
    account_number::text                  as account_number,
    default_currency::varchar(3)          as default_currency,
    updated_date_utc::timestamptz         as updated_at
from latest
