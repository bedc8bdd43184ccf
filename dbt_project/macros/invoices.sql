{#-
  The invoice a charge paid, in either API shape (DECISIONLOG 23): the invoice's own `charge`
  (up to 2025-03-31, and after it for an InvoicePayment of type `charge`), else the invoice whose
  InvoicePayment names the charge's payment intent (2025-03-31.basil and later), else the charge's
  own `invoice` (up to 2025-03-31). Three keyed left joins (hashable in a full build, index probes
  in an incremental one) instead of an OR; `invoice_col` picks a column of whichever matched.
-#}
{% macro charge_invoice_joins(ch, invoices) -%}
    left join {{ invoices }} as inv_c
        on inv_c.stripe_account = {{ ch }}.stripe_account and inv_c.charge_id = {{ ch }}.charge_id
    left join {{ invoices }} as inv_p
        on inv_p.stripe_account = {{ ch }}.stripe_account and inv_p.payment_intent_id = {{ ch }}.payment_intent_id
        and inv_p.charge_id is null
    left join {{ invoices }} as inv_i
        on inv_i.stripe_account = {{ ch }}.stripe_account and inv_i.invoice_id = {{ ch }}.invoice_id
{%- endmacro %}

{% macro invoice_col(col) -%}
    coalesce(inv_c.{{ col }}, inv_p.{{ col }}, inv_i.{{ col }})
{%- endmacro %}

{#- Categories that move their charge's tax pro rata (mapping `tax.reverse_on_refunds`, default on). -#}
{% macro tax_reversing_categories() -%}
    ('refund', 'refund_failure', 'partial_capture_reversal', 'dispute', 'dispute_reversal')
{%- endmacro %}
