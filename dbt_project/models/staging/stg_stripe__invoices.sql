{#-
  Invoices in either API shape (the version each row was read at is `_api_version`):
    * up to 2025-03-31: `tax`, `total_tax_amounts[]` (`inclusive` flag), `charge`, `payment_intent`;
    * 2025-03-31.basil and later: `total_taxes[]` (`tax_behavior`), the payment intent / charge
      from the first InvoicePayment (staged as `payment_intent_id` / `charge_id` by the extractor).
  `tax_amount` is all tax, `inclusive_tax_amount` the part already inside the line amounts,
  `discount_amount` the sum of `total_discount_amounts`; total = subtotal - discount + exclusive tax.
-#}
select
    stripe_account,
    id as invoice_id,
    created as created_at,
    customer_id,
    charge_id,
    payment_intent_id,
    lower(currency) as currency,
    status as invoice_status,
    number as invoice_number,
    subtotal as subtotal_amount,
    coalesce(tax, (select sum((t ->> 'amount')::bigint) from jsonb_array_elements(tax_lines) as t), 0)::bigint
        as tax_amount,
    coalesce((
        select sum((t ->> 'amount')::bigint) from jsonb_array_elements(tax_lines) as t
        where coalesce((t ->> 'inclusive')::boolean, t ->> 'tax_behavior' = 'inclusive')
    ), 0)::bigint as inclusive_tax_amount,
    coalesce((
        select sum((d ->> 'amount')::bigint) from jsonb_array_elements(discount_lines) as d
    ), 0)::bigint as discount_amount,
    total as total_amount,
    amount_paid,
    tax_lines as total_tax_amounts,
    lines as invoice_lines,
    metadata,
    _api_version,
    _extracted_at
from (
    select
        i.*,
        case
            when jsonb_typeof(i.raw -> 'total_taxes') = 'array' then i.raw -> 'total_taxes'
            when jsonb_typeof(i.total_tax_amounts) = 'array' then i.total_tax_amounts
            else '[]'::jsonb
        end as tax_lines,
        case jsonb_typeof(i.raw -> 'total_discount_amounts')
            when 'array' then i.raw -> 'total_discount_amounts' else '[]'::jsonb
        end as discount_lines
    from {{ source('stripe', 'invoices') }} as i
) as i
