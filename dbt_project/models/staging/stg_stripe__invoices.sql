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
    tax as tax_amount,
    total as total_amount,
    amount_paid,
    total_tax_amounts,
    lines as invoice_lines,
    metadata,
    _extracted_at
from {{ source('stripe', 'invoices') }}
