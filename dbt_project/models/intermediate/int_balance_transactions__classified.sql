{#-
  One row per balance transaction with everything the journal needs: its accounting category
  (reporting_category, else the mapping's fallback from `type`, else unmapped -> suspense), the
  counter / fee / clearing / bank accounts from the mapping, the tax part of a charge, the payout
  that swept it, its posting date, and its journal legs netted per account (the leg_* arrays, in
  line order; computed once here, read by fct_journal_lines for both posting modes).
  Incremental: a run re-reads only the transactions whose own row, payout membership, charge or
  invoice was extracted since the last run, plus those created within the look-back; a re-read
  row that comes out unchanged keeps its `_classified_at` (what the journal lines rebuild by).
-#}
{{
    config(
        unique_key=['stripe_account', 'balance_transaction_id'],
        post_hook=[
            "{{ ensure_index(\'stripe_account, balance_transaction_id\', \'key\') }}",
            "{{ ensure_index(\'stripe_account, payout_id\', \'payout\') }}",
            "{{ ensure_index(\'_classified_at\', \'classified_at\') }}",
            "{{ ensure_index(\'_source_extracted_at\', \'source_extracted_at\') }}",
            "{{ ensure_index(\'created_at\', \'created_at\') }}",
        ],
    )
}}

with settings as (
    select * from {{ source('finance_config', 'settings') }}
),

{% if is_incremental() %}
{#- Literal bounds (macros/incremental.sql), so that every branch below is an index range scan. -#}
{%- set extracted_after = extracted_since('_source_extracted_at') -%}
{%- set created_after = created_since('created_at') %}
changed as (
    select b.stripe_account, b.balance_transaction_id
    from {{ ref('stg_stripe__balance_transactions') }} as b
    where b._extracted_at > {{ extracted_after }} or b.created_at > {{ created_after }}
    union
    select m.stripe_account, m.balance_transaction_id
    from {{ ref('stg_stripe__payout_balance_transactions') }} as m
    where m._extracted_at > {{ extracted_after }}
    union
    select ch.stripe_account, ch.balance_transaction_id
    from {{ ref('stg_stripe__charges') }} as ch
    where ch._extracted_at > {{ extracted_after }} and ch.balance_transaction_id is not null
    union
    select ch.stripe_account, ch.balance_transaction_id
    from {{ ref('stg_stripe__invoices') }} as i
    inner join {{ ref('stg_stripe__charges') }} as ch
        on ch.stripe_account = i.stripe_account and ch.invoice_id = i.invoice_id
    where i._extracted_at > {{ extracted_after }} and ch.balance_transaction_id is not null
    union
    select ch.stripe_account, ch.balance_transaction_id
    from {{ ref('stg_stripe__invoices') }} as i
    inner join {{ ref('stg_stripe__charges') }} as ch
        on ch.stripe_account = i.stripe_account and ch.charge_id = i.charge_id
    where i._extracted_at > {{ extracted_after }} and ch.balance_transaction_id is not null
    union
    select ch.stripe_account, ch.balance_transaction_id
    from {{ ref('stg_stripe__invoices') }} as i
    inner join {{ ref('stg_stripe__charges') }} as ch
        on ch.stripe_account = i.stripe_account and ch.payment_intent_id = i.payment_intent_id
    where i._extracted_at > {{ extracted_after }} and ch.balance_transaction_id is not null
    union
    -- Refunds and disputes reverse their charge's tax pro rata: re-read them when the charge changes.
    select r.stripe_account, r.balance_transaction_id
    from {{ ref('stg_stripe__charges') }} as ch
    inner join {{ ref('stg_stripe__refunds') }} as r
        on r.stripe_account = ch.stripe_account and r.charge_id = ch.charge_id
    where ch._extracted_at > {{ extracted_after }} and r.balance_transaction_id is not null
    union
    select d.stripe_account, bt.value ->> 'id'
    from {{ ref('stg_stripe__charges') }} as ch
    inner join {{ ref('stg_stripe__disputes') }} as d
        on d.stripe_account = ch.stripe_account and d.charge_id = ch.charge_id
    cross join lateral jsonb_array_elements(d.balance_transactions) as bt
    where ch._extracted_at > {{ extracted_after }}
),
{% endif %}

balance_transactions as (
    select b.*
    from {{ ref('stg_stripe__balance_transactions') }} as b
    {% if is_incremental() %}
    where (b.stripe_account, b.balance_transaction_id) in (select stripe_account, balance_transaction_id from changed)
    {% endif %}
),

membership as (
    -- A transaction belongs to exactly one payout; distinct on keeps a duplicate listing harmless.
    select distinct on (stripe_account, balance_transaction_id)
        stripe_account, balance_transaction_id, payout_id, _extracted_at
    from {{ ref('stg_stripe__payout_balance_transactions') }}
    {% if is_incremental() %}
    where (stripe_account, balance_transaction_id) in (select stripe_account, balance_transaction_id from changed)
    {% endif %}
    order by stripe_account, balance_transaction_id, payout_id
),

categorised as (
    select
        b.*,
        case
            when b.reporting_category in ('charge', 'payout', 'payout_reversal') then b.reporting_category
            when by_category.counter_account is not null then b.reporting_category
            when fallback.reporting_category is not null then fallback.reporting_category
            else coalesce(nullif(b.reporting_category, ''), b.balance_transaction_type)
        end as accounting_category,
        case
            when b.reporting_category in ('charge', 'payout', 'payout_reversal') then 'reporting_category'
            when by_category.counter_account is not null then 'reporting_category'
            when fallback.reporting_category is not null then 'type_fallback'
            else 'unmapped'
        end as classification_source
    from balance_transactions as b
    left join {{ source('finance_config', 'category_accounts') }} as by_category
        on by_category.reporting_category = b.reporting_category
    left join {{ source('finance_config', 'type_fallback') }} as fallback
        on fallback.balance_transaction_type = b.balance_transaction_type
),

-- The charge a transaction belongs to: its source (a charge), or the charge of its refund / dispute.
related as (
    select
        c.*,
        coalesce(rf.charge_id, dp.charge_id, c.source_id) as related_charge_id,
        greatest(rf._extracted_at, dp._extracted_at) as related_extracted_at
    from categorised as c
    left join {{ ref('stg_stripe__refunds') }} as rf
        on c.accounting_category <> 'charge' and rf.stripe_account = c.stripe_account and rf.refund_id = c.source_id
    left join {{ ref('stg_stripe__disputes') }} as dp
        on c.accounting_category <> 'charge' and dp.stripe_account = c.stripe_account and dp.dispute_id = c.source_id
),

with_charge as (
    select
        r.*,
        ch.charge_id as related_charge,
        case when r.accounting_category = 'charge' then ch.charge_id end as charge_id,
        ch.customer_id,
        ch.currency as presentment_currency,
        ch.amount as presentment_amount,
        greatest(ch._extracted_at, r.related_extracted_at) as charge_extracted_at,
        {{ invoice_col('invoice_id') }} as invoice_id,
        {{ invoice_col('_extracted_at') }} as invoice_extracted_at,
        -- The charge's tax in its (presentment) currency, per the mapping's tax source.
        case
            when ch.charge_id is null or s.tax_source = 'none' then 0
            when s.tax_source = 'invoice_then_metadata' and {{ invoice_col('invoice_id') }} is not null
                then coalesce({{ invoice_col('tax_amount') }}, 0)
            when (ch.metadata ->> s.tax_metadata_key) ~ '^-?[0-9]+$'
                then (ch.metadata ->> s.tax_metadata_key)::bigint
            else 0
        end as charge_tax_presentment,
        case
            when ch.charge_id is null or s.tax_source = 'none' then 'none'
            when s.tax_source = 'invoice_then_metadata' and {{ invoice_col('invoice_id') }} is not null then 'invoice'
            when (ch.metadata ->> s.tax_metadata_key) ~ '^-?[0-9]+$' then 'metadata'
            else 'none'
        end as charge_tax_source,
        s.tax_reversal
    from related as r
    cross join settings as s
    {% if is_incremental() -%}
    -- A run's window: look the charge up by key (joined on an expression, the planner would hash
    -- every charge).
    left join lateral (
        select x.* from {{ ref('stg_stripe__charges') }} as x
        where x.stripe_account = r.stripe_account and x.charge_id = r.related_charge_id
        limit 1
    ) as ch on true
    {%- else -%}
    left join {{ ref('stg_stripe__charges') }} as ch
        on ch.stripe_account = r.stripe_account and ch.charge_id = r.related_charge_id
    {%- endif %}
    {{ charge_invoice_joins('ch', ref('stg_stripe__invoices')) }}
),

classified as (
select
    w.stripe_account,
    w.balance_transaction_id,
    w.created_at,
    w.available_at,
    (case when s.activity_date = 'available_on' then w.available_at else w.created_at end
        at time zone s.timezone)::date as posting_date,
    w.amount,
    w.fee,
    w.net,
    w.currency,
    w.exchange_rate,
    w.balance_transaction_type,
    w.reporting_category,
    w.accounting_category,
    w.classification_source,
    w.classification_source = 'unmapped' as is_unmapped,
    -- Payouts and their failures are posted from the payout (Dr Bank / Cr Clearing), not per transaction.
    (w.accounting_category in ('payout', 'payout_reversal')
        or w.balance_transaction_type in ('payout', 'payout_cancel', 'payout_failure')) as is_payout_movement,
    w.balance_transaction_status,
    w.source_id,
    w.charge_id,
    w.related_charge as related_charge_id,
    w.customer_id,
    w.invoice_id,
    case when w.accounting_category = 'charge' then w.presentment_currency end as presentment_currency,
    case when w.accounting_category = 'charge' then w.presentment_amount end as presentment_amount,
    case
        when w.accounting_category = 'charge' then w.charge_tax_source
        when w.charge_tax_presentment <> 0 and w.tax_reversal and w.accounting_category in {{ tax_reversing_categories() }}
            then 'reversal:' || w.charge_tax_source
        else 'none'
    end as tax_source,
    case when w.accounting_category = 'charge' then w.charge_tax_presentment else 0 end::bigint as tax_amount_presentment,
    case
        when w.charge_tax_presentment = 0 then 0::bigint
        when w.accounting_category = 'charge' then
            case
                when w.presentment_currency = w.currency or w.exchange_rate is null then w.charge_tax_presentment
                else {{ convert_minor('w.charge_tax_presentment', 'w.presentment_currency', 'w.currency', 'w.exchange_rate') }}
            end
        -- A refund / dispute / their reversals move the charge's tax pro rata to the amount moved:
        -- amount x tax / charge amount (both in the presentment currency, so the ratio is exact),
        -- rounded half away from zero; a full refund reverses exactly the tax posted.
        when w.tax_reversal and w.accounting_category in {{ tax_reversing_categories() }} and w.presentment_amount <> 0 then
            case
                when w.presentment_currency = w.currency and w.amount = -w.presentment_amount then -w.charge_tax_presentment
                else round(w.amount::numeric * w.charge_tax_presentment / w.presentment_amount)::bigint
            end
        else 0::bigint
    end as tax_amount,
    case
        when w.accounting_category = 'charge' then s.revenue_account
        when w.accounting_category in ('payout', 'payout_reversal') then coalesce(cur.bank_account, s.default_bank_account)
        else coalesce(mapped.counter_account, s.suspense_account)
    end as counter_account,
    s.sales_tax_account,
    fee_override.fee_account as fee_account_override,
    s.default_fee_account,
    coalesce(cur.clearing_account, s.default_clearing_account) as clearing_account,
    coalesce(cur.bank_account, s.default_bank_account) as bank_account,
    w.fee_details,
    -- Almost every transaction has no or one fee detail: read those directly, expand only the rest.
    coalesce(
        case jsonb_array_length(w.fee_details)
            when 0 then 0::bigint
            when 1 then (w.fee_details -> 0 ->> 'amount')::bigint
        end,
        (select coalesce(sum((fd ->> 'amount')::bigint), 0) from jsonb_array_elements(w.fee_details) as fd)::bigint
    ) as fee_details_total,
    m.payout_id,
    greatest(w._extracted_at, m._extracted_at, w.charge_extracted_at, w.invoice_extracted_at) as _source_extracted_at,
    now() as _classified_at
from with_charge as w
cross join settings as s
left join membership as m
    on m.stripe_account = w.stripe_account and m.balance_transaction_id = w.balance_transaction_id
left join {{ source('finance_config', 'category_accounts') }} as mapped
    on mapped.reporting_category = w.accounting_category
left join {{ source('finance_config', 'fee_accounts') }} as fee_override
    on fee_override.match_kind = 'category' and fee_override.match_value = w.accounting_category
left join {{ source('finance_config', 'currency_accounts') }} as cur
    on cur.currency = w.currency
)

{% if is_incremental() %}, rebuilt as ({% endif %}
select
    c.*,
    legs.leg_accounts,
    legs.leg_amounts,
    legs.leg_orders,
    legs.leg_unmapped
from classified as c
-- The journal legs of the transaction (macros/journal_legs.sql), netted per account, in the order of
-- its journal lines: non-zero lines first (debits, then credits; clearing, fee, counter, tax; then by
-- account), zero ones last. Payout movements have none (they are posted from the payout).
cross join lateral (
    select
        array_agg(n.account_code order by n.net_amount = 0, n.net_amount < 0, n.leg_order, n.account_code) as leg_accounts,
        array_agg(n.net_amount order by n.net_amount = 0, n.net_amount < 0, n.leg_order, n.account_code) as leg_amounts,
        array_agg(n.leg_order order by n.net_amount = 0, n.net_amount < 0, n.leg_order, n.account_code) as leg_orders,
        array_agg(n.is_unmapped order by n.net_amount = 0, n.net_amount < 0, n.leg_order, n.account_code) as leg_unmapped
    from (
        select
            legs.account_code,
            sum(legs.signed_amount)::bigint as net_amount,
            min({{ leg_order('legs.leg_type') }}) as leg_order,
            bool_or(c.is_unmapped and legs.leg_type = 'counter') as is_unmapped
        from ({{ journal_legs('c', source('finance_config', 'fee_accounts')) }}) as legs
        where not c.is_payout_movement
        group by legs.account_code
    ) as n
) as legs
{%- if is_incremental() %}
)

{#- A re-read transaction whose row comes out as it was keeps its `_classified_at`: the journal lines
    rebuild only what changed, not the whole look-back. Every column but the two timestamps is
    compared (the list is read from the table, so a new column is compared too). -#}
{%- set columns = adapter.get_columns_in_relation(this) | map(attribute='name') | list %}
{%- set compared = columns | reject('in', ['_source_extracted_at', '_classified_at']) | list %}
select
{%- for col in columns %}
    {% if col == '_classified_at' -%}
    case
        when (p.{{ compared | join(', p.') }}) is not distinct from (n.{{ compared | join(', n.') }})
            then p._classified_at
        else n._classified_at
    end as _classified_at
    {%- else -%}
    n.{{ col }}
    {%- endif %}{{ ',' if not loop.last }}
{%- endfor %}
from rebuilt as n
left join {{ this }} as p
    on p.stripe_account = n.stripe_account and p.balance_transaction_id = n.balance_transaction_id
{%- endif %}
