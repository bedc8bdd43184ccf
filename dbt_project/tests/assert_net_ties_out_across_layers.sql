{#-
  Cross-layer integrity, per Stripe account and settlement currency (as fivetran's dbt_stripe ties its
  balance transactions out across layers). The balance transactions' net, in integer minor units, is
    1. the same in staging and in the classification: no transaction lost, duplicated or altered;
    2. the movement of the currency's clearing account in the detail-mode journal, once the payout
       movements not posted yet are set aside (a payout's transaction debits the Stripe balance when
       the payout is created; its entry, Dr Bank / Cr Clearing, is posted once it is paid).
  Returns the (account, currency) pairs that disagree, with every figure.

  Every row is read on a full refresh, with `test_scope: all`, and when the staging views are built
  (first build, changed dbt code). An hourly run checks the transactions it (re)classified: their
  count and net against staging, and the clearing lines of their detail entries (index look-ups).
-#}
{{ config(meta={'dagster': {'ref': {'name': 'fct_journal_lines'}}}) }}
{%- set classified_model = ref('int_balance_transactions__classified') -%}
{%- set whole = flags.FULL_REFRESH or var('test_scope', 'changed') == 'all'
        or 'model.stripe_sage.stg_stripe__balance_transactions' in selected_resources -%}
{%- if not whole -%}
    {%- set latest = scalar_bound('select max(_classified_at) from ' ~ classified_model) -%}
{%- endif %}

with classified as (
    select stripe_account, balance_transaction_id, currency, net, is_payout_movement, clearing_account
    from {{ classified_model }}
    {% if not whole %}where _classified_at = {{ latest }}{% endif %}
),

-- The staging table itself (not its view: an hourly run builds no view, and a test of an unbuilt
-- model would not run).
staged as (
    select b.stripe_account, lower(b.currency) as currency, count(*) as transactions, sum(b.net) as net
    from {{ source('stripe', 'balance_transactions') }} as b
    {% if not whole %}
    where (b.stripe_account, b.id) in (select stripe_account, balance_transaction_id from classified)
    {% endif %}
    group by b.stripe_account, lower(b.currency)
),

{% if whole %}
-- The payout and payout-failure transactions whose entry is in the journal (detail mode).
posted_payout_movements as (
    select distinct stripe_account, balance_transaction_id
    from {{ ref('fct_journal_lines') }}
    where posting_mode = 'detail' and entry_type in ('payout', 'payout_reversal') and balance_transaction_id is not null
),
{% endif %}

by_classification as (
    select
        c.stripe_account,
        c.currency,
        count(*) as transactions,
        sum(c.net) as net,
        -- What the clearing account moved by: the activity, and the payouts once posted (hourly: the activity).
        coalesce(sum(c.net) filter (where not c.is_payout_movement
            {%- if whole %} or p.balance_transaction_id is not null{% endif %}), 0) as expected_clearing
    from classified as c
    {% if whole %}
    left join posted_payout_movements as p
        on p.stripe_account = c.stripe_account and p.balance_transaction_id = c.balance_transaction_id
    {% endif %}
    group by c.stripe_account, c.currency
),

clearing as (
    select l.stripe_account, l.currency, sum(l.debit - l.credit) as movement
    from {{ ref('fct_journal_lines') }} as l
    inner join (select distinct stripe_account, currency, clearing_account from classified) as a
        on a.stripe_account = l.stripe_account and a.currency = l.currency and a.clearing_account = l.account_code
    where l.posting_mode = 'detail' and l.balance_transaction_id is not null
    {% if not whole %}and l.entry_type = 'balance_transaction' and l._classified_at = {{ latest }}{% endif %}
    group by l.stripe_account, l.currency
)

select
    coalesce(s.stripe_account, c.stripe_account) as stripe_account,
    coalesce(s.currency, c.currency) as currency,
    s.transactions as staged_transactions,
    c.transactions as classified_transactions,
    s.net as staged_net,
    c.net as classified_net,
    c.expected_clearing,
    coalesce(j.movement, 0) as clearing_movement
from staged as s
full outer join by_classification as c on c.stripe_account = s.stripe_account and c.currency = s.currency
left join clearing as j
    on j.stripe_account = coalesce(s.stripe_account, c.stripe_account) and j.currency = coalesce(s.currency, c.currency)
where s.transactions is distinct from c.transactions
    or s.net is distinct from c.net
    or coalesce(c.expected_clearing, 0) <> coalesce(j.movement, 0)
