{#-
  The activity Stripe has not paid out yet, per account and settlement currency: the journal legs of
  every transaction that no paid payout's summary entry posts (macros/summary.sql, the rule the
  summary entries follow). This is exactly detail minus payout_summary, account by account
  (docs/accounting.md): activity waiting for its payout, a payout in transit, a manual payout not
  yet made. Zero once everything is paid out. A view: read by the demo and the close, not posted.
-#}
{{ config(materialized='view') }}

with classified as (
    select * from {{ ref('int_balance_transactions__classified') }}
),

payouts as (
    select * from {{ ref('stg_stripe__payouts') }}
),

{{ payout_state_ctes('payouts', 'classified') }},

paid_payouts as (
    select * from all_payout_state where was_paid
),

members as (
    {{ summary_members('paid_payouts', 'classified') }}
)

select
    c.stripe_account,
    c.currency,
    l.account_code,
    sum(l.net_amount)::bigint as net_amount,
    {{ to_major('sum(l.net_amount)', 'c.currency') }} as net_amount_decimal,
    count(distinct c.balance_transaction_id) as transactions
from classified as c
cross join lateral unnest(c.leg_accounts, c.leg_amounts) as l (account_code, net_amount)
where not c.is_payout_movement
    and not exists (
        select 1 from members as m
        where m.stripe_account = c.stripe_account and m.balance_transaction_id = c.balance_transaction_id
    )
group by c.stripe_account, c.currency, l.account_code
having sum(l.net_amount) <> 0
