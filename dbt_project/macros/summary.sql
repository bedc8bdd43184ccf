{#-
  Which activity each payout's summary entry posts (docs/accounting.md, "Summary mode"): one rule,
  used by fct_journal_lines (for the payouts of a run) and fct_activity_not_paid_out (for all).
    * an automatic payout: the transactions it swept (its `?payout=` list);
    * a manual payout (no list) that was not failed or canceled before it was paid: the transactions
      no automatic payout swept, of its account and currency, created after the previous such
      manual payout and up to its own creation (what it paid out of the balance);
    * either: the transactions of an automatic payout that failed before it was paid, when it is
      the payout that paid that amount out again (it swept the failure transaction, or the failure
      is in its manual range).
  `payout_state_ctes` defines all_payout_state (every payout, was_paid, failed_at),
  manual_boundaries and failed_resweeps; payouts are few, so they are always computed whole.
-#}
{% macro payout_state_ctes(payouts, classified) -%}
-- Every payout's state (payouts are few: a handful a day per currency). Paid now, or paid before it
-- failed: a payout can fail after arrival (a bank return). Events are read only for the payouts not
-- yet `paid` (recent or failed ones).
all_payout_state as (
    select
        p.*,
        coalesce(failure_bt.created_at, pe.failed_event_at) as failed_at,
        (
            p.payout_status = 'paid'
            or coalesce(pe.has_paid_event, false)
            or (p.payout_status = 'failed' and coalesce(failure_bt.created_at, pe.failed_event_at) >= p.arrival_at)
        ) as was_paid
    from {{ payouts }} as p
    left join {{ ref('stg_stripe__balance_transactions') }} as failure_bt
        on failure_bt.stripe_account = p.stripe_account
        and failure_bt.balance_transaction_id = p.failure_balance_transaction_id
    left join lateral (
        select
            bool_or(e.event_type = 'payout.paid') as has_paid_event,
            min(e.created_at) filter (where e.event_type in ('payout.failed', 'payout.canceled')) as failed_event_at
        from {{ ref('stg_stripe__events') }} as e
        where e.stripe_account = p.stripe_account and e.object_id = p.payout_id
            and e.event_type in ('payout.paid', 'payout.failed', 'payout.canceled')
    ) as pe on p.payout_status <> 'paid'
),

-- Manual payouts (no member list) pay out the balance: in summary mode each one that was not
-- failed or canceled before it paid takes the activity no automatic payout swept, created after
-- the previous such manual payout of its account and currency and up to its own creation.
manual_boundaries as (
    select
        ps.stripe_account,
        ps.payout_id,
        ps.currency,
        ps.created_at,
        lag(ps.created_at) over (
            partition by ps.stripe_account, ps.currency order by ps.created_at, ps.payout_id
        ) as previous_created_at,
        lead(ps.payout_id) over (
            partition by ps.stripe_account, ps.currency order by ps.created_at, ps.payout_id
        ) as next_payout_id
    from all_payout_state as ps
    where not ps.is_automatic and (ps.payout_status not in ('failed', 'canceled') or ps.was_paid)
),

-- An automatic payout that failed before it was paid returns its amount to the balance (its
-- failure transaction); the payout that pays that amount out again, automatic (it swept the failure
-- transaction) or manual (the failure is in its range), takes the failed payout's activity too.
failed_resweeps as (
    select
        ps.stripe_account,
        ps.payout_id as failed_payout_id,
        coalesce(fb.payout_id, mb.payout_id) as sweeping_payout_id
    from all_payout_state as ps
    inner join {{ classified }} as fb
        on fb.stripe_account = ps.stripe_account and fb.balance_transaction_id = ps.failure_balance_transaction_id
    left join manual_boundaries as mb
        on fb.payout_id is null and mb.stripe_account = fb.stripe_account and mb.currency = fb.currency
        and fb.created_at > coalesce(mb.previous_created_at, '-infinity'::timestamptz) and fb.created_at <= mb.created_at
    where ps.is_automatic and ps.payout_status in ('failed', 'canceled') and not ps.was_paid
)
{%- endmacro %}

{#- The (stripe_account, payout_id, balance_transaction_id) a paid payout's summary posts, with the
    transaction's legs (leg_* arrays) and `_classified_at`, so the summary sums them without looking
    each member up again; `paid_payouts` is a relation of paid payouts (with is_automatic), after
    payout_state_ctes. -#}
{% macro summary_members(paid_payouts, classified) -%}
select pa.stripe_account, pa.payout_id, c.balance_transaction_id, c.leg_accounts, c.leg_amounts, c.leg_unmapped,
        c._classified_at
    from {{ paid_payouts }} as pa
    inner join {{ classified }} as c on c.stripe_account = pa.stripe_account and c.payout_id = pa.payout_id
    where pa.is_automatic and not c.is_payout_movement
    union all
    select pa.stripe_account, pa.payout_id, c.balance_transaction_id, c.leg_accounts, c.leg_amounts, c.leg_unmapped,
        c._classified_at
    from {{ paid_payouts }} as pa
    inner join manual_boundaries as mb on mb.stripe_account = pa.stripe_account and mb.payout_id = pa.payout_id
    inner join {{ classified }} as c
        on c.stripe_account = mb.stripe_account and c.currency = mb.currency and c.payout_id is null
        and c.created_at > coalesce(mb.previous_created_at, '-infinity'::timestamptz) and c.created_at <= mb.created_at
    where not c.is_payout_movement
    union all
    select pa.stripe_account, pa.payout_id, c.balance_transaction_id, c.leg_accounts, c.leg_amounts, c.leg_unmapped,
        c._classified_at
    from {{ paid_payouts }} as pa
    inner join failed_resweeps as fr on fr.stripe_account = pa.stripe_account and fr.sweeping_payout_id = pa.payout_id
    inner join {{ classified }} as c on c.stripe_account = fr.stripe_account and c.payout_id = fr.failed_payout_id
    where not c.is_payout_movement
{%- endmacro %}
