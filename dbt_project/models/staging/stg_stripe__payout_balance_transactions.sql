select
    stripe_account,
    payout_id,
    balance_transaction_id,
    _extracted_at
from {{ source('stripe', 'payout_balance_transactions') }}
