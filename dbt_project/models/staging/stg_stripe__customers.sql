select
    stripe_account,
    id as customer_id,
    created as created_at,
    email,
    name as customer_name,
    description,
    phone,
    lower(currency) as currency,
    address_line1,
    address_line2,
    address_city,
    address_state,
    address_postal_code,
    upper(address_country) as address_country,
    metadata,
    livemode as is_livemode,
    _extracted_at
from {{ source('stripe', 'customers') }}
