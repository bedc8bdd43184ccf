{#-
  Performance plumbing (DECISIONLOG 13-17): session settings of the model transactions, indexes on
  the staging tables that the incremental windows read, and the scoping of data tests to the rows a
  run (re)built.
-#}

{#- Model transactions (pre-hook, `set local`): room for the big hash joins and aggregates; no JIT
    compilation, which costs more than it saves on these queries (PostgreSQL 18); and index look-ups
    priced as what they are when the data is cached, so that a small incremental window probes the
    keys instead of hashing a whole staging table. An incremental run also plans without parallel
    workers: its windows are small, its models build side by side on few cores, and a parallel
    sequential scan priced as cheap would read a whole staging table to find a window's rows. -#}
{% macro session_settings() -%}
    set local work_mem = '256MB'; set local jit = off; set local random_page_cost = 1.1
    {%- if is_incremental() %}; set local max_parallel_workers_per_gather = 0{% endif %}
{%- endmacro %}

{#- Indexes on the staging tables (on-run-start, idempotent): every incremental window reads rows
    extracted after a high-water mark, and the payout model looks events up by payout. -#}
{% macro staging_indexes() -%}
    {%- set s = source('stripe', 'balance_transactions').schema -%}
    {%- for table in ['balance_transactions', 'charges', 'refunds', 'payouts', 'invoices', 'customers',
                      'payout_balance_transactions', 'events'] %}
    create index if not exists {{ table }}_extracted_at_idx on {{ s }}.{{ table }} (_extracted_at);
    {%- endfor %}
    create index if not exists events_object_idx on {{ s }}.events (stripe_account, object_id);
    create index if not exists charges_invoice_idx on {{ s }}.charges (invoice_id) where invoice_id is not null;
    create index if not exists charges_payment_intent_idx on {{ s }}.charges (stripe_account, payment_intent_id) where payment_intent_id is not null;
    create index if not exists invoices_charge_idx on {{ s }}.invoices (stripe_account, charge_id) where charge_id is not null;
    create index if not exists invoices_payment_intent_idx on {{ s }}.invoices (stripe_account, payment_intent_id) where payment_intent_id is not null;
    create index if not exists refunds_charge_idx on {{ s }}.refunds (stripe_account, charge_id) where charge_id is not null;
    create index if not exists disputes_charge_idx on {{ s }}.disputes (stripe_account, charge_id);
{%- endmacro %}

{#-
  Data tests are configured with `where: __changed_rows__` (dbt_project.yml). In a run that is not a
  full refresh, the big tables then test only what this run is about to model or has just modelled:
    * marts / the classification: the rows of the latest load (`_loaded_at` / `_classified_at` equal
      to its maximum, read as a literal; indexed) -- delete+insert replaces whole entries/documents, so a key unique
      among the new rows cannot collide with an older one;
    * staging views read by the classification: rows extracted after its high-water mark (the
      window it reads), or everything when it does not exist yet.
  A full refresh, `--vars '{test_scope: all}'`, and every other model test everything.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where and '__changed_rows__' in where -%}
        {%- set predicate = changed_rows_predicate(relation) -%}
        {%- set where = where | replace('__changed_rows__', predicate if predicate else 'true') -%}
    {%- endif -%}
    {%- if where and where | trim != 'true' -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{% macro changed_rows_predicate(relation) -%}
    {%- if flags.FULL_REFRESH or var('test_scope', 'changed') == 'all' -%}
        {%- do return(none) -%}
    {%- endif -%}
    {%- set latest_load = {
        'int_balance_transactions__classified': '_classified_at',
        'fct_journal_lines': '_loaded_at',
        'fct_invoice_lines': '_loaded_at',
    } -%}
    {%- set read_by_classification = ['stg_stripe__balance_transactions', 'stg_stripe__charges'] -%}
    {%- set name = relation.identifier -%}
    {%- if name in latest_load -%}
        {%- set col = latest_load[name] -%}
        {%- do return(col ~ ' = ' ~ scalar_bound('select max(' ~ col ~ ') from ' ~ relation)) -%}
    {%- elif name in read_by_classification -%}
        {%- set nodes = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
                        | selectattr('name', 'equalto', 'int_balance_transactions__classified') | list -%}
        {%- if nodes | length == 0 -%}{%- do return(none) -%}{%- endif -%}
        {%- set classified = adapter.get_relation(database=nodes[0].database, schema=nodes[0].schema,
                                                  identifier=nodes[0].alias) -%}
        {%- if classified is none -%}{%- do return(none) -%}{%- endif -%}
        {%- do return('_extracted_at > ' ~ scalar_bound('select coalesce(max(_source_extracted_at), \'-infinity\'::timestamptz) - interval \''
                      ~ var('extracted_lookback_minutes') ~ ' minutes\' from ' ~ classified)) -%}
    {%- else -%}
        {%- do return(none) -%}
    {%- endif -%}
{%- endmacro %}
