{#- A Stripe currency: three lowercase ISO 4217 letters (the staging views lower-case it), so that
    currency_exponent (macros/money.sql) and the mapping's per-currency accounts can match it. -#}
{% test currency_code(model, column_name) %}
select {{ column_name }}
from {{ model }}
where {{ column_name }} is null or {{ column_name }} !~ '^[a-z]{3}$'
{% endtest %}
