{#-
  The id of a journal entry in fct_journal_lines (its delete+insert key, and the prefix of every
  journal_line_id): `<mode>:[<connected account>:]<object id>[<suffix>]`, where mode is `detail` or
  `summary` (posting_mode payout_summary), the connected account keeps Connect accounts apart, and the
  object is the balance transaction (detail) or the payout. E.g. detail:txn_1, summary:po_1,
  detail:acct_9:po_2:reversal. Arguments are SQL expressions.
-#}
{% macro entry_id(posting_mode, stripe_account, object_id, suffix=none) -%}
    (case {{ posting_mode }} when 'detail' then 'detail:' else 'summary:' end
        || case when {{ stripe_account }} <> '' then {{ stripe_account }} || ':' else '' end
        || {{ object_id }}{% if suffix is not none %} || {{ suffix }}{% endif %})
{%- endmacro %}
