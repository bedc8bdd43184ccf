select
    stripe_account,
    id as event_id,
    created as created_at,
    type as event_type,
    object_type,
    object_id,
    _extracted_at
from {{ source('stripe', 'events') }}
