{#-
  What Sage invoices are made of: one line per invoice line item when the charge has an invoice,
  else one line per charge (quantity 1, unit price = amount - tax). Tax per the mapping's tax
  source, revenue and tax accounts from the mapping, the customer's custno from dim_customers.
  Invoices in either API shape (macros/invoices.sql): a line's revenue is its amount less its
  discounts (`discount_amounts`) and less the tax included in it (inclusive `tax_amounts` /
  `taxes`), its tax all of its tax, so that document_total = sum(line_amount) + document_tax holds
  with coupons and tax-inclusive prices (checked by Great Expectations).
  A document is in the currency the charge settled in (its balance transaction's): a charge
  presented in another currency is converted at the transaction's exchange_rate, the tax as the
  classification converts it and the lines taking the rest (the last line the rounding), so that
  the invoice equals the cash receipt and receivables clear; the presentment amount and rate are kept.
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
    union
    select i.stripe_account, i.charge_id from {{ ref('stg_stripe__invoices') }} as i
    where i._extracted_at > {{ extracted_since('_source_extracted_at') }} and i.charge_id is not null
    union
    select x.stripe_account, x.charge_id
    from {{ ref('stg_stripe__invoices') }} as i
    inner join {{ ref('stg_stripe__charges') }} as x
        on x.stripe_account = i.stripe_account and x.payment_intent_id = i.payment_intent_id
    where i._extracted_at > {{ extracted_since('_source_extracted_at') }}
    union
    select x.stripe_account, x.charge_id
    from {{ ref('stg_stripe__balance_transactions') }} as b
    inner join {{ ref('stg_stripe__charges') }} as x
        on x.stripe_account = b.stripe_account and x.charge_id = b.source_id
    where b._extracted_at > {{ extracted_since('_source_extracted_at') }} and b.balance_transaction_type in ('charge', 'payment')
),
{% endif %}

charges as (
    {% if is_incremental() -%}
    -- The run's charges looked up by key (an IN over the union would hash every charge).
    select ch.*
    from changed_charges as cc
    cross join lateral (
        select x.* from {{ ref('stg_stripe__charges') }} as x
        where x.stripe_account = cc.stripe_account and x.charge_id = cc.charge_id
        limit 1
    ) as ch
    where ch.charge_status = 'succeeded' and ch.is_captured
    {%- else -%}
    select ch.*
    from {{ ref('stg_stripe__charges') }} as ch
    where ch.charge_status = 'succeeded' and ch.is_captured
    {%- endif %}
),

documents as (
    select
        ch.stripe_account,
        ch.charge_id,
        ch.created_at as charge_created_at,
        -- The settlement currency (the charge's balance transaction), else the charge's own.
        coalesce(bt.currency, ch.currency) as currency,
        ch.currency as presentment_currency,
        ch.amount_captured as presentment_total,
        case when bt.currency is not null and bt.currency <> ch.currency then bt.exchange_rate end as exchange_rate,
        coalesce({{ invoice_col('customer_id') }}, ch.customer_id) as customer_id,
        ch.description as charge_description,
        ch.charge_status,
        ch.amount_captured,
        ch.metadata,
        case when s.tax_source = 'invoice_then_metadata' then {{ invoice_col('invoice_id') }} end as invoice_id,
        {{ invoice_col('invoice_number') }} as invoice_number,
        {{ invoice_col('total_amount') }} as invoice_total,
        coalesce({{ invoice_col('tax_amount') }}, 0)::bigint as invoice_tax,
        case jsonb_typeof({{ invoice_col('invoice_lines') }})
            when 'array' then {{ invoice_col('invoice_lines') }}
            when 'object' then {{ invoice_col('invoice_lines') }} -> 'data'
        end as invoice_lines,
        case
            when s.tax_source = 'none' then 0
            when (ch.metadata ->> s.tax_metadata_key) ~ '^-?[0-9]+$' then (ch.metadata ->> s.tax_metadata_key)::bigint
            else 0
        end as metadata_tax,
        bt.amount as settlement_total,
        (ch.created_at at time zone s.timezone)::date as posting_date,
        s.revenue_account,
        s.sales_tax_account,
        greatest(ch._extracted_at, {{ invoice_col('_extracted_at') }}, bt._extracted_at) as _source_extracted_at
    from charges as ch
    cross join settings as s
    {{ charge_invoice_joins('ch', ref('stg_stripe__invoices')) }}
    left join {{ ref('stg_stripe__balance_transactions') }} as bt
        on bt.stripe_account = ch.stripe_account and bt.balance_transaction_id = ch.balance_transaction_id
),

-- Amounts in the presentment currency (the charge's, the invoice's).
invoice_lines_presented as (
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
            (li.value -> 'pricing' ->> 'unit_amount_decimal')::numeric::bigint,
            (li.value ->> 'amount')::bigint / nullif(coalesce((li.value ->> 'quantity')::bigint, 1), 0)
        ) as list_unit_price,
        (li.value ->> 'amount')::bigint as gross_amount,
        coalesce((
            select sum((x ->> 'amount')::bigint) from jsonb_array_elements(li.value -> 'discount_amounts') as x
        ), 0)::bigint as discount_amount,
        coalesce((
            select sum((t ->> 'amount')::bigint) from jsonb_array_elements(line_taxes.taxes) as t
        ), 0)::bigint as line_tax,
        coalesce((
            select sum((t ->> 'amount')::bigint) from jsonb_array_elements(line_taxes.taxes) as t
            where coalesce((t ->> 'inclusive')::boolean, t ->> 'tax_behavior' = 'inclusive')
        ), 0)::bigint as inclusive_tax,
        d.invoice_total as document_total_presented,
        d.invoice_tax as document_tax_presented
    from documents as d
    cross join lateral jsonb_array_elements(d.invoice_lines) with ordinality as li (value, ordinality)
    cross join lateral (
        select case
            when jsonb_typeof(li.value -> 'taxes') = 'array' then li.value -> 'taxes'
            when jsonb_typeof(li.value -> 'tax_amounts') = 'array' then li.value -> 'tax_amounts'
            else '[]'::jsonb
        end as taxes
    ) as line_taxes
    where d.invoice_id is not null and jsonb_array_length(d.invoice_lines) > 0
),

charge_lines_presented as (
    select
        d.*,
        'charge' as document_type,
        d.charge_id as document_id,
        1 as line_number,
        d.charge_id as source_line_id,
        coalesce(d.charge_description, 'Stripe charge ' || d.charge_id) as description,
        1::bigint as quantity,
        d.amount_captured - d.metadata_tax as list_unit_price,
        d.amount_captured as gross_amount,
        0::bigint as discount_amount,
        d.metadata_tax as line_tax,
        d.metadata_tax as inclusive_tax,
        d.amount_captured as document_total_presented,
        d.metadata_tax as document_tax_presented
    from documents as d
    where d.invoice_id is null or d.invoice_lines is null or jsonb_array_length(d.invoice_lines) = 0
),

presented as (
    select
        p.*,
        p.gross_amount - p.discount_amount - p.inclusive_tax as net_amount
    from (
        select * from invoice_lines_presented
        union all
        select * from charge_lines_presented
    ) as p
),

-- Into the settlement currency when the charge settled in another one (exchange_rate set).
converted as (
    select
        p.*,
        case when p.exchange_rate is null then p.document_total_presented
            else coalesce(p.settlement_total,
                {{ convert_minor('p.document_total_presented', 'p.presentment_currency', 'p.currency', 'p.exchange_rate') }})
        end as document_total,
        case when p.exchange_rate is null then p.document_tax_presented
            else {{ convert_minor('p.document_tax_presented', 'p.presentment_currency', 'p.currency', 'p.exchange_rate') }}
        end as document_tax,
        case when p.exchange_rate is null then p.line_tax
            else {{ convert_minor('p.line_tax', 'p.presentment_currency', 'p.currency', 'p.exchange_rate') }}
        end as line_tax_converted,
        case when p.exchange_rate is null then p.net_amount
            else {{ convert_minor('p.net_amount', 'p.presentment_currency', 'p.currency', 'p.exchange_rate') }}
        end as net_converted,
        p.line_number = max(p.line_number) over (partition by p.stripe_account, p.charge_id) as is_last_line
    from presented as p
),

lines as (
    select
        c.*,
        case
            when c.exchange_rate is null or not c.is_last_line then c.line_tax_converted
            else c.document_tax - coalesce(sum(c.line_tax_converted) over w_before, 0)
        end as tax_amount,
        case
            when c.exchange_rate is null or not c.is_last_line then c.net_converted
            else c.document_total - c.document_tax - coalesce(sum(c.net_converted) over w_before, 0)
        end as line_amount
    from converted as c
    window w_before as (
        partition by c.stripe_account, c.charge_id order by c.line_number rows between unbounded preceding and 1 preceding
    )
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
    -- The line's revenue per unit (after discounts and included tax); one unit when it does not divide.
    case when l.quantity > 0 and l.line_amount % l.quantity = 0 then l.quantity else 1 end::bigint as quantity,
    case when l.quantity > 0 and l.line_amount % l.quantity = 0 then l.line_amount / l.quantity else l.line_amount end::bigint
        as unit_price,
    l.line_amount,
    l.tax_amount,
    l.discount_amount,
    l.currency,
    {{ to_major('case when l.quantity > 0 and l.line_amount % l.quantity = 0 then l.line_amount / l.quantity else l.line_amount end', 'l.currency') }}
        as unit_price_decimal,
    {{ to_major('l.tax_amount', 'l.currency') }} as tax_amount_decimal,
    l.revenue_account,
    l.sales_tax_account,
    l.document_total,
    l.document_tax,
    l.presentment_currency,
    l.presentment_total,
    l.exchange_rate,
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
