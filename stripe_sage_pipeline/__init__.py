"""stripe-sage-pipeline: Stripe money movements into Sage Pro ERP, orchestrated by Dagster."""
