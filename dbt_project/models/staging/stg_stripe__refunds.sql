select
    stripe_account,
    id as refund_id,
    created as created_at,
    amount,
    lower(currency) as currency,
    charge_id,
    balance_transaction_id,
    payment_intent_id,
    status as refund_status,
    reason as refund_reason,
    metadata,
    _extracted_at
from {{ source('stripe', 'refunds') }}
