select
    stripe_account,
    id as dispute_id,
    created as created_at,
    amount,
    lower(currency) as currency,
    charge_id,
    payment_intent_id,
    status as dispute_status,
    reason as dispute_reason,
    balance_transactions,
    metadata,
    _extracted_at
from {{ source('stripe', 'disputes') }}
