{#-
  Money stays in integer minor units everywhere. These are the only places that know a currency's
  exponent: zero-decimal currencies (JPY, KRW, ...) are whole units, three-decimal ones (KWD, ...)
  thousandths; every other currency has two decimals.
-#}

{% macro currency_exponent(currency) -%}
    (case
        when lower({{ currency }}) in ({% for c in var('zero_decimal_currencies') %}'{{ c }}'{% if not loop.last %}, {% endif %}{% endfor %}) then 0
        when lower({{ currency }}) in ({% for c in var('three_decimal_currencies') %}'{{ c }}'{% if not loop.last %}, {% endif %}{% endfor %}) then 3
        else 2
    end)
{%- endmacro %}

{#- The one conversion from minor units to an exact decimal with the currency's scale (77.38, 5000, 12.500). -#}
{% macro to_major(amount, currency) -%}
    round(({{ amount }})::numeric / power(10::numeric, {{ currency_exponent(currency) }}), {{ currency_exponent(currency) }})
{%- endmacro %}

{#-
  Minor units of one currency into minor units of another at Stripe's exchange_rate (which is per
  major unit), rounded half away from zero; used for the tax of a charge presented in another currency.
-#}
{% macro convert_minor(amount, from_currency, to_currency, rate) -%}
    round(
        ({{ amount }})::numeric * ({{ rate }})::numeric
        * power(10::numeric, {{ currency_exponent(to_currency) }} - {{ currency_exponent(from_currency) }})
    )::bigint
{%- endmacro %}
