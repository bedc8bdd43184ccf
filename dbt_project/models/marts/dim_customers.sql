{#-
  Stripe customer -> Sage customer. The custno is assigned once, in sage_sync.customer_xref
  (see macros/customers.sql), before this model is built, and read from there ever after.
  Incremental by customer: a run rebuilds the customers extracted since the last run (minus the
  extraction look-back) and those that were just given a custno.
-#}
{{
    config(
        unique_key=['stripe_account', 'customer_id'],
        pre_hook="{{ assign_custnos(ref('stg_stripe__customers')) }}",
        post_hook=["{{ ensure_index(\'stripe_account, customer_id\', \'key\') }}"],
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
{% if is_incremental() %}
where (c.stripe_account, c.customer_id) in (
    select u.stripe_account, u.customer_id from {{ ref('stg_stripe__customers') }} as u
    where u._extracted_at > {{ extracted_since('_extracted_at') }}
    union
    select a.stripe_account, a.customer_id from sage_sync.customer_xref as a
    where a.assigned_at > (select coalesce(max(custno_assigned_at), '-infinity'::timestamptz) from {{ this }})
)
{% endif %}
