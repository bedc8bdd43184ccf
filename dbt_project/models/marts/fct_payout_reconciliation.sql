{#-
  One row per payout: what the bank receives (payout.amount) against what the payout swept.
  gross / fees / net_of_items are sums over its member transactions other than the payout's own;
  difference = payout_amount - net_of_items must be zero for a complete automatic payout.
  status: failed (failed/canceled payout), manual (not automatic: no member list to reconcile),
  incomplete (no member list yet, or a listed transaction missing from staging), difference, or reconciled.
  Incremental by payout: only payouts whose row or member list changed since the last run.
-#}
{{
    config(
        unique_key=['stripe_account', 'payout_id'],
        post_hook=["{{ ensure_index(\'stripe_account, payout_id\', \'key\') }}"],
    )
}}

with payouts as (
    select p.*
    from {{ ref('stg_stripe__payouts') }} as p
    {% if is_incremental() %}
    where (p.stripe_account, p.payout_id) in (
        select x.stripe_account, x.payout_id from {{ ref('stg_stripe__payouts') }} as x
        where x._extracted_at > {{ extracted_since('_source_extracted_at') }}
        union
        select m.stripe_account, m.payout_id from {{ ref('stg_stripe__payout_balance_transactions') }} as m
        where m._extracted_at > {{ extracted_since('_source_extracted_at') }}
        union
        -- A member transaction extracted after its payout's membership (late arrival).
        select m.stripe_account, m.payout_id
        from {{ ref('stg_stripe__balance_transactions') }} as b
        inner join {{ ref('stg_stripe__payout_balance_transactions') }} as m
            on m.stripe_account = b.stripe_account and m.balance_transaction_id = b.balance_transaction_id
        where b._extracted_at > {{ extracted_since('_source_extracted_at') }}
    )
    {% endif %}
),

members as (
    select
        m.stripe_account,
        m.payout_id,
        m.balance_transaction_id,
        m._extracted_at,
        b.balance_transaction_id is not null as is_staged,
        b.amount,
        b.fee,
        b.net,
        b._extracted_at as bt_extracted_at,
        m.balance_transaction_id = p.balance_transaction_id as is_own
    from payouts as p
    inner join {{ ref('stg_stripe__payout_balance_transactions') }} as m
        on m.stripe_account = p.stripe_account and m.payout_id = p.payout_id
    {% if is_incremental() -%}
    -- A few payouts: look each member up by key. (The planner cannot know how few payouts the
    -- window holds and would hash the whole staging table; `limit 1` keeps this a keyed look-up.)
    left join lateral (
        select bt.* from {{ ref('stg_stripe__balance_transactions') }} as bt
        where bt.stripe_account = m.stripe_account and bt.balance_transaction_id = m.balance_transaction_id
        limit 1
    ) as b on true
    {%- else -%}
    left join {{ ref('stg_stripe__balance_transactions') }} as b
        on b.stripe_account = m.stripe_account and b.balance_transaction_id = m.balance_transaction_id
    {%- endif %}
),

totals as (
    select
        stripe_account,
        payout_id,
        count(*) as member_count,
        count(*) filter (where not is_own) as item_count,
        count(*) filter (where not is_staged) as missing_count,
        bool_or(is_own) as has_own_transaction,
        coalesce(sum(amount) filter (where not is_own), 0)::bigint as gross,
        coalesce(sum(fee) filter (where not is_own), 0)::bigint as fees,
        coalesce(sum(net) filter (where not is_own), 0)::bigint as net_of_items,
        coalesce(sum(net), 0)::bigint as net_of_all,
        max(greatest(_extracted_at, bt_extracted_at)) as members_extracted_at
    from members
    group by stripe_account, payout_id
),

reconciled as (
    select
        p.stripe_account,
        p.payout_id,
        p.currency,
        p.payout_status,
        p.is_automatic,
        p.created_at,
        p.arrival_at,
        (p.arrival_at at time zone 'UTC')::date as arrival_date,
        p.balance_transaction_id,
        p.amount as payout_amount,
        coalesce(t.gross, 0) as gross,
        coalesce(t.fees, 0) as fees,
        coalesce(t.net_of_items, 0) as net_of_items,
        p.amount - coalesce(t.net_of_items, 0) as difference,
        coalesce(t.net_of_all, 0) as net_of_all,
        coalesce(t.item_count, 0) as item_count,
        coalesce(t.missing_count, 0) as missing_count,
        coalesce(t.has_own_transaction, false) as has_own_transaction,
        (p.is_automatic and coalesce(t.item_count, 0) > 0 and coalesce(t.missing_count, 0) = 0) as is_complete,
        greatest(p._extracted_at, t.members_extracted_at) as _source_extracted_at
    from payouts as p
    left join totals as t on t.stripe_account = p.stripe_account and t.payout_id = p.payout_id
)

select
    r.*,
    case
        when r.payout_status in ('failed', 'canceled') then 'failed'
        -- A manual payout has no member list: Stripe does not itemise it, so there is nothing to
        -- reconcile it against (summary mode posts the unswept activity of its range with it).
        when not r.is_automatic then 'manual'
        when not r.is_complete then 'incomplete'
        when r.difference <> 0 then 'difference'
        else 'reconciled'
    end as reconciliation_status,
    {{ to_major('r.payout_amount', 'r.currency') }} as payout_amount_decimal,
    {{ to_major('r.gross', 'r.currency') }} as gross_decimal,
    {{ to_major('r.fees', 'r.currency') }} as fees_decimal,
    {{ to_major('r.net_of_items', 'r.currency') }} as net_of_items_decimal,
    {{ to_major('r.difference', 'r.currency') }} as difference_decimal,
    now() as _loaded_at
from reconciled as r
