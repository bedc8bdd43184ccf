select
    stripe_account,
    id as balance_transaction_id,
    created as created_at,
    available_on as available_at,
    amount,
    fee,
    net,
    lower(currency) as currency,
    exchange_rate,
    type as balance_transaction_type,
    reporting_category,
    source_id,
    status as balance_transaction_status,
    description,
    fee_details,
    _extracted_at
from {{ source('stripe', 'balance_transactions') }}
