{#-
  Stripe customer -> Sage customer. The custno is assigned once, in sage_sync.customer_xref
  (see macros/customers.sql), before this model is built, and read from there ever after.
-#}
{{
    config(
        materialized='table',
        pre_hook="{{ assign_custnos(ref('stg_stripe__customers')) }}",
    )
}}

with settings as (
    select * from {{ source('finance_config', 'settings') }}
),

defaults as (
    select max(default_value) filter (where field = 'country') as country
    from {{ source('finance_config', 'field_defaults') }}
)

select
    x.custno,
    c.stripe_account,
    c.customer_id,
    coalesce(nullif(c.customer_name, ''), c.email, c.customer_id) as customer_name,
    c.email,
    c.phone,
    c.address_line1,
    c.address_line2,
    c.address_city,
    c.address_state,
    c.address_postal_code,
    coalesce(c.address_country, d.country) as address_country,
    coalesce(c.currency, s.base_currency) as currency,
    c.customer_id as external_ref,
    c.created_at,
    x.assigned_at as custno_assigned_at,
    c._extracted_at
from {{ ref('stg_stripe__customers') }} as c
inner join sage_sync.customer_xref as x
    on x.stripe_account = c.stripe_account and x.customer_id = c.customer_id
cross join settings as s
cross join defaults as d
