{#-
  Assigns a Sage custno to every Stripe customer that has none yet, in sage_sync.customer_xref.
  custno = up to 5 letters/digits of the name (else email, else id) + '-' + a 4-digit sequence per
  prefix, e.g. ACMEC-0001: at most 10 characters of [A-Z0-9-], deterministic for a given order of
  arrival, and never changed once assigned (rows are only ever inserted). The unique constraint
  makes a collision impossible rather than unlikely. Past 9,999 customers on one prefix, a ten-digit
  number from one global counter is used instead.
-#}
{% macro assign_custnos(customers_relation) -%}
    create schema if not exists sage_sync;
    create table if not exists sage_sync.customer_xref (
        stripe_account text not null default '',
        customer_id text not null,
        custno text not null unique check (custno ~ '^[A-Z0-9][A-Z0-9-]{0,9}$'),
        custno_prefix text not null,
        custno_seq integer not null check (custno_seq >= 1),
        assigned_at timestamptz not null default now(),
        primary key (stripe_account, customer_id)
    );
    create index if not exists customer_xref_prefix_idx on sage_sync.customer_xref (custno_prefix, custno_seq);
    lock table sage_sync.customer_xref in share row exclusive mode;
    insert into sage_sync.customer_xref (stripe_account, customer_id, custno, custno_prefix, custno_seq)
    with new_customers as (
        select
            c.stripe_account,
            c.customer_id,
            c.created_at,
            coalesce(
                nullif(left(upper(regexp_replace(coalesce(c.customer_name, ''), '[^A-Za-z0-9]', '', 'g')), 5), ''),
                nullif(left(upper(regexp_replace(coalesce(split_part(c.email, '@', 1), ''), '[^A-Za-z0-9]', '', 'g')), 5), ''),
                'CUST'
            ) as custno_prefix
        from {{ customers_relation }} as c
        where not exists (
            select 1 from sage_sync.customer_xref as x
            where x.stripe_account = c.stripe_account and x.customer_id = c.customer_id
        )
    ),
    -- The highest sequence per prefix, read once per prefix (index), not once per new customer.
    prefix_max as (
        select x.custno_prefix, max(x.custno_seq) as max_seq
        from sage_sync.customer_xref as x
        where x.custno_prefix in (select custno_prefix from new_customers)
        group by x.custno_prefix
    ),
    numbered as (
        select
            n.*,
            coalesce(pm.max_seq, 0)
            + row_number() over (partition by n.custno_prefix order by n.created_at, n.stripe_account, n.customer_id) as custno_seq
        from new_customers as n
        left join prefix_max as pm on pm.custno_prefix = n.custno_prefix
    )
    ,
    with_overflow as (
        -- Past 9,999 per prefix: ten digits from one global counter (prefix ''); having no '-', these
        -- can never equal a PREFIX-NNNN custno.
        select
            n.*,
            case when n.custno_seq > 9999 then
                coalesce((select max(x.custno_seq) from sage_sync.customer_xref as x where x.custno_prefix = ''), 0)
                + row_number() over (partition by n.custno_seq > 9999 order by n.created_at, n.stripe_account, n.customer_id)
            end as overflow_seq
        from numbered as n
    )
    select
        stripe_account,
        customer_id,
        case when custno_seq > 9999 then lpad(overflow_seq::text, 10, '0')
             else custno_prefix || '-' || lpad(custno_seq::text, 4, '0') end,
        case when custno_seq > 9999 then '' else custno_prefix end,
        case when custno_seq > 9999 then overflow_seq else custno_seq end
    from with_overflow
    on conflict (stripe_account, customer_id) do nothing
{%- endmacro %}
