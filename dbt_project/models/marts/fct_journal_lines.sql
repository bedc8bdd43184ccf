{#-
  Balanced journal lines in both posting modes (accounting.md):
    * detail: one entry per balance transaction (external_ref txn_...), plus Dr Bank / Cr Clearing
      per payout once it is paid, dated at its arrival date;
    * payout_summary: one entry per paid payout (external_ref po_...): the legs of the activity it
      paid out plus its bank leg, netted per account. An automatic payout pays out what it swept
      (clearing nets to zero); a manual payout the activity no automatic payout swept, created
      since the previous manual payout; both also the activity of an automatic payout that failed
      before it was paid, whose amount they paid out again (docs/accounting.md);
    * both: a reversing entry when a paid payout later fails (never an edit of the original).
  Lines are per (entry, account): debit or credit, non-negative, in integer minor units of the
  settlement currency. `is_selected_mode` marks the mode the mapping posts.
  Incremental by entry: a run rebuilds only the entries whose transactions were reclassified or
  whose payout changed since the last run (delete+insert on entry_id).
  The legs of a transaction are computed once, netted and in line order, by the classification
  (leg_* arrays); here detail lines are those arrays unnested, and a summary entry sums them per
  account over the payout's members. Only the few payout-level entries are netted and numbered here.
-#}
{{
    config(
        unique_key='entry_id',
        post_hook=[
            "{{ ensure_index(\'entry_id\', \'entry\') }}",
            "{{ ensure_index(\'stripe_account, payout_id\', \'payout\') }}",
            "{{ ensure_index(\'_loaded_at\', \'loaded_at\') }}",
            "{{ ensure_index(\'_classified_at\', \'classified_at\') }}",
            "{{ ensure_index(\'_payout_extracted_at\', \'payout_extracted_at\') }}",
        ],
    )
}}

with settings as (
    select * from {{ source('finance_config', 'settings') }}
),

classified as not materialized (
    select * from {{ ref('int_balance_transactions__classified') }}
),

-- Not materialized: the final look-up of each line's payout can then use the payouts' key.
payouts as not materialized (
    select * from {{ ref('stg_stripe__payouts') }}
),

{{ payout_state_ctes('payouts', 'classified') }},

{% if is_incremental() %}
{#- High-water marks of this table (indexed), as literals (macros/incremental.sql). -#}
{%- set classified_after = scalar_bound("select coalesce(max(_classified_at), '-infinity'::timestamptz) from " ~ this) -%}
{%- set extracted_after = extracted_since('_payout_extracted_at') %}
window_transactions as (
    select c.*
    from classified as c
    where c._classified_at > {{ classified_after }}
),

changed_payouts as (
    select p.stripe_account, p.payout_id
    from payouts as p
    where p._extracted_at > {{ extracted_after }}
    union
    select e.stripe_account, e.object_id
    from {{ ref('stg_stripe__events') }} as e
    where e._extracted_at > {{ extracted_after }} and e.event_type like 'payout.%'
),

window_payouts as (
    select stripe_account, payout_id from changed_payouts
    union
    select w.stripe_account, w.payout_id from window_transactions as w where w.payout_id is not null
    union
    -- the manual payout whose range holds a changed unswept transaction
    select mb.stripe_account, mb.payout_id
    from window_transactions as w
    inner join manual_boundaries as mb
        on w.payout_id is null and mb.stripe_account = w.stripe_account and mb.currency = w.currency
        and w.created_at > coalesce(mb.previous_created_at, '-infinity'::timestamptz) and w.created_at <= mb.created_at
    union
    -- a changed manual payout moves the start of the next one's range
    select mb.stripe_account, mb.next_payout_id
    from manual_boundaries as mb
    inner join changed_payouts as cp on cp.stripe_account = mb.stripe_account and cp.payout_id = mb.payout_id
    where mb.next_payout_id is not null
    union
    -- the payout that re-swept a failed payout that changed or whose transactions changed
    select fr.stripe_account, fr.sweeping_payout_id
    from failed_resweeps as fr
    where fr.sweeping_payout_id is not null and (fr.stripe_account, fr.failed_payout_id) in (
        select stripe_account, payout_id from changed_payouts
        union
        select stripe_account, payout_id from window_transactions where payout_id is not null
    )
),
{% else %}
window_transactions as (
    select * from classified
),

window_payouts as (
    select stripe_account, payout_id from payouts
),
{% endif %}

payout_state as (
    select ps.*
    from all_payout_state as ps
    inner join window_payouts as wp on wp.stripe_account = ps.stripe_account and wp.payout_id = ps.payout_id
),

payout_accounts as (
    select
        ps.*,
        coalesce(cur.clearing_account, s.default_clearing_account) as clearing_account,
        coalesce(cur.bank_account, s.default_bank_account) as bank_account
    from payout_state as ps
    cross join settings as s
    left join {{ source('finance_config', 'currency_accounts') }} as cur on cur.currency = ps.currency
    where ps.was_paid
),

-- detail: one entry per activity transaction; its lines are its netted legs, already in order
detail_lines as (
    select
        'detail' as posting_mode,
        'balance_transaction' as entry_type,
        {{ entry_id("'detail'", 'c.stripe_account', 'c.balance_transaction_id') }} as entry_id,
        c.balance_transaction_id as external_ref,
        c.posting_date,
        c.currency,
        c.stripe_account,
        c.balance_transaction_id,
        c.payout_id,
        c.source_id,
        c.charge_id,
        c.customer_id,
        c.accounting_category,
        c.balance_transaction_type || ' ' || coalesce(c.source_id, c.balance_transaction_id)
            || case when c.exchange_rate is not null and c.presentment_currency is not null
                then ' (presented ' || {{ to_major('c.presentment_amount', 'c.presentment_currency') }}::text
                    || ' ' || upper(c.presentment_currency) || ' @ ' || c.exchange_rate::text || ')'
                else '' end as memo,
        l.account_code,
        l.is_unmapped,
        l.net_amount,
        c._classified_at,
        l.line_number::integer as line_number
    from window_transactions as c
    cross join lateral unnest(c.leg_accounts, c.leg_amounts, c.leg_unmapped)
        with ordinality as l (account_code, net_amount, is_unmapped, line_number)
    where not c.is_payout_movement and l.net_amount <> 0
),

-- payout_summary: the legs of the activity a paid payout paid out (macros/summary.sql), plus its bank leg.
summary_members as (
    {{ summary_members('payout_accounts', 'classified') }}
),

summary_member_legs as (
    select
        sm.stripe_account,
        sm.payout_id,
        l.account_code,
        sum(l.net_amount) as signed_amount,
        bool_or(l.is_unmapped) as is_unmapped,
        max(sm._classified_at) as _classified_at
    from summary_members as sm
    cross join lateral unnest(sm.leg_accounts, sm.leg_amounts, sm.leg_unmapped) as l (account_code, net_amount, is_unmapped)
    group by sm.stripe_account, sm.payout_id, l.account_code
),

payout_bank_legs as (
    select pa.stripe_account, pa.payout_id, pa.bank_account as account_code, pa.amount as signed_amount
    from payout_accounts as pa
    union all
    select pa.stripe_account, pa.payout_id, pa.clearing_account, -pa.amount
    from payout_accounts as pa
),

summary_legs as (
    select
        'payout_summary' as posting_mode,
        'payout_summary' as entry_type,
        {{ entry_id("'payout_summary'", 'pa.stripe_account', 'pa.payout_id') }} as entry_id,
        pa.payout_id as external_ref,
        (pa.arrival_at at time zone 'UTC')::date as posting_date,
        pa.currency,
        pa.stripe_account,
        null::text as balance_transaction_id,
        pa.payout_id,
        pa.payout_id as source_id,
        null::text as charge_id,
        null::text as customer_id,
        'payout' as accounting_category,
        coalesce(l.is_unmapped, false) as is_unmapped,
        case when pa.is_automatic then 'Stripe payout ' else 'Stripe manual payout ' end
            || pa.payout_id || ' arriving ' || (pa.arrival_at at time zone 'UTC')::date::text as memo,
        l.leg_type,
        l.account_code,
        l.signed_amount,
        l._classified_at
    from payout_accounts as pa
    inner join (
        select stripe_account, payout_id, 'member' as leg_type, account_code, signed_amount, is_unmapped, _classified_at
        from summary_member_legs
        union all
        select stripe_account, payout_id, 'bank', account_code, signed_amount, false, null::timestamptz
        from payout_bank_legs
    ) as l on l.stripe_account = pa.stripe_account and l.payout_id = pa.payout_id
),

-- detail: the payout itself; both modes: the reversal of a paid payout that failed
payout_legs as (
    select
        modes.posting_mode,
        kinds.entry_type,
        {{ entry_id('modes.posting_mode', 'pa.stripe_account', 'pa.payout_id', 'kinds.suffix') }} as entry_id,
        case kinds.entry_type
            when 'payout' then coalesce(pa.balance_transaction_id, pa.payout_id)
            else coalesce(pa.failure_balance_transaction_id, pa.payout_id || '-reversal')
        end as external_ref,
        case kinds.entry_type
            when 'payout' then (pa.arrival_at at time zone 'UTC')::date
            else (coalesce(pa.failed_at, pa.arrival_at) at time zone 'UTC')::date
        end as posting_date,
        pa.currency,
        pa.stripe_account,
        case kinds.entry_type when 'payout' then pa.balance_transaction_id else pa.failure_balance_transaction_id end
            as balance_transaction_id,
        pa.payout_id,
        pa.payout_id as source_id,
        null::text as charge_id,
        null::text as customer_id,
        case kinds.entry_type when 'payout' then 'payout' else 'payout_reversal' end as accounting_category,
        false as is_unmapped,
        case kinds.entry_type
            when 'payout' then 'Stripe payout ' || pa.payout_id
            else 'Reversal of failed Stripe payout ' || pa.payout_id || coalesce(' (' || pa.failure_code || ')', '')
        end as memo,
        bank.leg_type,
        bank.account_code,
        bank.signed_amount * kinds.sign as signed_amount,
        null::timestamptz as _classified_at
    from payout_accounts as pa
    cross join (values ('detail'), ('payout_summary')) as modes (posting_mode)
    cross join (values ('payout', '', 1), ('payout_reversal', ':reversal', -1)) as kinds (entry_type, suffix, sign)
    cross join lateral (
        select 'bank' as leg_type, pa.bank_account as account_code, pa.amount as signed_amount
        union all
        select 'clearing', pa.clearing_account, -pa.amount
    ) as bank
    where (kinds.entry_type = 'payout' and modes.posting_mode = 'detail')
        or (kinds.entry_type = 'payout_reversal' and pa.payout_status in ('failed', 'canceled'))
),

payout_level_legs as (
    select * from summary_legs
    union all
    select * from payout_legs
),

payout_level_netted as (
    select
        posting_mode,
        entry_type,
        entry_id,
        external_ref,
        posting_date,
        currency,
        stripe_account,
        balance_transaction_id,
        payout_id,
        source_id,
        charge_id,
        customer_id,
        accounting_category,
        memo,
        account_code,
        bool_or(is_unmapped) as is_unmapped,
        -- Order in an entry: debits then credits; bank first, then by account.
        min({{ leg_order('leg_type') }}) as leg_order,
        sum(signed_amount)::bigint as net_amount,
        max(_classified_at) as _classified_at
    from payout_level_legs
    group by
        posting_mode, entry_type, entry_id, external_ref, posting_date, currency, stripe_account,
        balance_transaction_id, payout_id, source_id, charge_id, customer_id, accounting_category, memo, account_code
),

lines as (
    select
        posting_mode, entry_type, entry_id, external_ref, posting_date, currency, stripe_account,
        balance_transaction_id, payout_id, source_id, charge_id, customer_id, accounting_category, memo,
        account_code, is_unmapped, net_amount, _classified_at, line_number
    from detail_lines
    union all
    select
        posting_mode, entry_type, entry_id, external_ref, posting_date, currency, stripe_account,
        balance_transaction_id, payout_id, source_id, charge_id, customer_id, accounting_category, memo,
        account_code, is_unmapped, net_amount, _classified_at,
        row_number() over (partition by entry_id order by (net_amount < 0), leg_order, account_code)::integer
    from payout_level_netted
    where net_amount <> 0
)

select
    n.entry_id || ':' || n.account_code as journal_line_id,
    n.entry_id,
    n.posting_mode,
    n.posting_mode = s.posting_mode as is_selected_mode,
    n.entry_type,
    n.external_ref,
    n.posting_date,
    n.line_number,
    n.account_code,
    greatest(n.net_amount, 0) as debit,
    greatest(-n.net_amount, 0) as credit,
    n.currency,
    {{ to_major('greatest(n.net_amount, 0)', 'n.currency') }} as debit_amount,
    {{ to_major('greatest(-n.net_amount, 0)', 'n.currency') }} as credit_amount,
    n.memo,
    n.is_unmapped,
    n.accounting_category,
    n.stripe_account,
    n.balance_transaction_id,
    n.payout_id,
    n.source_id,
    n.charge_id,
    n.customer_id,
    n._classified_at,
    p._extracted_at as _payout_extracted_at,
    now() as _loaded_at
from lines as n
cross join settings as s
{% if is_incremental() -%}
-- A run's few thousand lines: look each payout up by key (the planner, guessing a handful of lines,
-- would otherwise scan the payouts once per line).
left join lateral (
    select x._extracted_at from payouts as x
    where x.stripe_account = n.stripe_account and x.payout_id = n.payout_id
    limit 1
) as p on true
{%- else -%}
left join payouts as p on p.stripe_account = n.stripe_account and p.payout_id = n.payout_id
{%- endif %}
