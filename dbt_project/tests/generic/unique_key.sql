{#- The model's grain: no two rows share the values of `columns` (a composite key, e.g. the Stripe
    account and the object id). Fails with each duplicated key and how often it occurs. -#}
{% test unique_key(model, columns) %}
select {{ columns | join(', ') }}, count(*) as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
