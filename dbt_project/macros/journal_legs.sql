{#-
  The sign-safe rule of accounting.md as legs of one classified balance transaction `c`
  (positive = debit, negative = credit):
      Dr Clearing net, Dr Fee fee (split by fee type), Cr Counter amount (a charge: revenue + tax).
  Since net = amount - fee the legs sum to zero whatever the signs. Used as a lateral join.
-#}
{% macro journal_legs(c, fee_accounts) -%}
    select 'clearing' as leg_type, {{ c }}.clearing_account as account_code, {{ c }}.net as signed_amount
    union all
    select 'counter', {{ c }}.counter_account, -({{ c }}.amount - {{ c }}.tax_amount)
    union all
    select 'tax', {{ c }}.sales_tax_account, -{{ c }}.tax_amount
    where {{ c }}.tax_amount <> 0
    union all
    select 'fee', coalesce(fa.fee_account, {{ c }}.default_fee_account), (fd.value ->> 'amount')::bigint
    from jsonb_array_elements({{ c }}.fee_details) as fd
    left join {{ fee_accounts }} as fa
        on fa.match_kind = 'fee_type' and fa.match_value = fd.value ->> 'type'
    where {{ c }}.fee_account_override is null
    union all
    -- What fee_details do not explain (or all of it when the category picks the fee account).
    select 'fee', coalesce({{ c }}.fee_account_override, {{ c }}.default_fee_account),
        {{ c }}.fee - case when {{ c }}.fee_account_override is null then {{ c }}.fee_details_total else 0 end
{%- endmacro %}


{#- Order of a leg's line within an entry: bank, clearing, fee, counter, then the rest (tax, member). -#}
{% macro leg_order(leg_type) -%}
    (case {{ leg_type }} when 'bank' then 0 when 'clearing' then 1 when 'fee' then 2 when 'counter' then 3 else 4 end)
{%- endmacro %}
