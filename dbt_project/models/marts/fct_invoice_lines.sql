{#-
  What Sage invoices are made of: one line per invoice line item when the charge has an invoice,
  else one line per charge (quantity 1, unit price = amount - tax). Tax per the mapping's tax
  source, revenue and tax accounts from the mapping, the customer's custno from dim_customers.
  document_total = sum(line_amount) + document_tax is checked (Great Expectations).
  Incremental by document (delete+insert on document_key).
-#}
{{
    config(
        unique_key='document_key',
        post_hook=[
            "{{ ensure_index(\'document_key\', \'document\') }}",
            "{{ ensure_index(\'_loaded_at\', \'loaded_at\') }}",
            "{{ ensure_index(\'_source_extracted_at\', \'source_extracted_at\') }}",
            "{{ ensure_index(\'charge_created_at\', \'charge_created_at\') }}",
        ],
    )
}}

with settings as (
    select * from {{ source('finance_config', 'settings') }}
),

{% if is_incremental() %}
-- The charges of this run, one index range scan per reason (an OR across them would scan all charges).
changed_charges as (
    select x.stripe_account, x.charge_id from {{ ref('stg_stripe__charges') }} as x
    where x._extracted_at > {{ extracted_since('_source_extracted_at') }}
    union
    select x.stripe_account, x.charge_id from {{ ref('stg_stripe__charges') }} as x
    where x.created_at > {{ created_since('charge_created_at') }}
    union
    select x.stripe_account, x.charge_id from {{ ref('stg_stripe__charges') }} as x
    where x.invoice_id in (
        select i.invoice_id from {{ ref('stg_stripe__invoices') }} as i
        where i._extracted_at > {{ extracted_since('_source_extracted_at') }}
    )
),
{% endif %}

charges as (
    select ch.*
    from {{ ref('stg_stripe__charges') }} as ch
    where ch.charge_status = 'succeeded' and ch.is_captured
    {% if is_incremental() %}
        and (ch.stripe_account, ch.charge_id) in (select stripe_account, charge_id from changed_charges)
    {% endif %}
),

documents as (
    select
        ch.stripe_account,
        ch.charge_id,
        ch.created_at as charge_created_at,
        ch.currency,
        coalesce(inv.customer_id, ch.customer_id) as customer_id,
        ch.description as charge_description,
        ch.charge_status,
        ch.amount_captured,
        ch.metadata,
        case when s.tax_source = 'invoice_then_metadata' then inv.invoice_id end as invoice_id,
        inv.invoice_number,
        inv.total_amount as invoice_total,
        coalesce(inv.tax_amount, (
            select sum((t ->> 'amount')::bigint) from jsonb_array_elements(inv.total_tax_amounts) as t
        ), 0)::bigint as invoice_tax,
        case jsonb_typeof(inv.invoice_lines)
            when 'array' then inv.invoice_lines
            when 'object' then inv.invoice_lines -> 'data'
        end as invoice_lines,
        case
            when s.tax_source = 'none' then 0
            when (ch.metadata ->> s.tax_metadata_key) ~ '^-?[0-9]+$' then (ch.metadata ->> s.tax_metadata_key)::bigint
            else 0
        end as metadata_tax,
        (ch.created_at at time zone s.timezone)::date as posting_date,
        s.revenue_account,
        s.sales_tax_account,
        greatest(ch._extracted_at, inv._extracted_at) as _source_extracted_at
    from charges as ch
    cross join settings as s
    left join {{ ref('stg_stripe__invoices') }} as inv
        on inv.stripe_account = ch.stripe_account and inv.invoice_id = ch.invoice_id
),

invoice_lines as (
    select
        d.*,
        'invoice' as document_type,
        d.invoice_id as document_id,
        li.ordinality::integer as line_number,
        coalesce(li.value ->> 'id', d.invoice_id || ':' || li.ordinality) as source_line_id,
        coalesce(li.value ->> 'description', d.charge_description, 'Invoice ' || coalesce(d.invoice_number, d.invoice_id))
            as description,
        coalesce((li.value ->> 'quantity')::bigint, 1) as quantity,
        coalesce(
            (li.value -> 'price' ->> 'unit_amount')::bigint,
            (li.value ->> 'amount')::bigint / nullif(coalesce((li.value ->> 'quantity')::bigint, 1), 0)
        ) as unit_price,
        (li.value ->> 'amount')::bigint as line_amount,
        coalesce((
            select sum((t ->> 'amount')::bigint) from jsonb_array_elements(li.value -> 'tax_amounts') as t
        ), 0)::bigint as tax_amount,
        d.invoice_total as document_total,
        d.invoice_tax as document_tax
    from documents as d
    cross join lateral jsonb_array_elements(d.invoice_lines) with ordinality as li (value, ordinality)
    where d.invoice_id is not null and jsonb_array_length(d.invoice_lines) > 0
),

charge_lines as (
    select
        d.*,
        'charge' as document_type,
        d.charge_id as document_id,
        1 as line_number,
        d.charge_id as source_line_id,
        coalesce(d.charge_description, 'Stripe charge ' || d.charge_id) as description,
        1::bigint as quantity,
        d.amount_captured - d.metadata_tax as unit_price,
        d.amount_captured - d.metadata_tax as line_amount,
        d.metadata_tax as tax_amount,
        d.amount_captured as document_total,
        d.metadata_tax as document_tax
    from documents as d
    where d.invoice_id is null or d.invoice_lines is null or jsonb_array_length(d.invoice_lines) = 0
),

lines as (
    select * from invoice_lines
    union all
    select * from charge_lines
)

select
    l.stripe_account || ':' || l.document_id || ':' || l.line_number as invoice_line_id,
    l.stripe_account || ':' || l.charge_id as document_key,
    l.document_type,
    l.document_id,
    l.line_number,
    l.source_line_id,
    l.stripe_account,
    l.charge_id,
    l.invoice_id,
    l.customer_id,
    cust.custno,
    l.description,
    l.quantity,
    l.unit_price,
    l.line_amount,
    l.tax_amount,
    l.currency,
    {{ to_major('l.unit_price', 'l.currency') }} as unit_price_decimal,
    {{ to_major('l.tax_amount', 'l.currency') }} as tax_amount_decimal,
    l.revenue_account,
    l.sales_tax_account,
    l.document_total,
    l.document_tax,
    coalesce(status_map.sage_value, l.charge_status) as sage_status,
    l.posting_date,
    l.charge_created_at,
    l._source_extracted_at,
    now() as _loaded_at
from lines as l
left join {{ ref('dim_customers') }} as cust
    on cust.stripe_account = l.stripe_account and cust.customer_id = l.customer_id
left join {{ source('finance_config', 'value_maps') }} as status_map
    on status_map.map_name = 'charge_status' and status_map.stripe_value = l.charge_status
