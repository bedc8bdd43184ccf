{#- Timestamp after which source rows count as new for an incremental model (its high-water mark). -#}
{% macro extracted_since(column) -%}
    (select coalesce(max({{ column }}), '-infinity'::timestamptz) - interval '{{ var("extracted_lookback_minutes") }} minutes' from {{ this }})
{%- endmacro %}

{% macro created_since(column) -%}
    (select coalesce(max({{ column }}), '-infinity'::timestamptz) - interval '{{ var("lookback_hours") }} hours' from {{ this }})
{%- endmacro %}

{#- An index on an incremental model, created once (post-hook); delete+insert looks rows up by it. -#}
{% macro ensure_index(columns, suffix) -%}
    create index if not exists {{ this.identifier }}_{{ suffix }}_idx on {{ this }} ({{ columns }})
{%- endmacro %}
