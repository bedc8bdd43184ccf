{#-
  Timestamp after which source rows count as new for an incremental model (its high-water mark).
  The bound is read when the model is compiled and written into its SQL as a literal: the planner
  then knows how few rows lie beyond it and uses the _extracted_at / created indexes (an init-plan
  parameter would be estimated at a third of the table, i.e. a sequential scan). Only the model
  itself writes {{ this }}, so reading the mark just before the run is the same as reading it in it.
-#}
{% macro extracted_since(column) -%}
    {{ scalar_bound("select coalesce(max(" ~ column ~ "), '-infinity'::timestamptz) - interval '" ~ var("extracted_lookback_minutes") ~ " minutes' from " ~ this) }}
{%- endmacro %}

{% macro created_since(column) -%}
    {{ scalar_bound("select coalesce(max(" ~ column ~ "), '-infinity'::timestamptz) - interval '" ~ var("lookback_hours") ~ " hours' from " ~ this) }}
{%- endmacro %}

{#- The value of a one-timestamp query as a literal when executing (a subquery when only parsing). -#}
{% macro scalar_bound(sql) -%}
    {%- if execute -%}
        {%- set value = run_query("select (" ~ sql ~ ")::text").columns[0].values()[0] -%}
        {%- if value is none -%}null::timestamptz{%- else -%}'{{ value }}'::timestamptz{%- endif -%}
    {%- else -%}
        ({{ sql }})
    {%- endif -%}
{%- endmacro %}

{#- An index on an incremental model, created once (post-hook); delete+insert looks rows up by it. -#}
{% macro ensure_index(columns, suffix) -%}
    create index if not exists {{ this.identifier }}_{{ suffix }}_idx on {{ this }} ({{ columns }})
{%- endmacro %}
