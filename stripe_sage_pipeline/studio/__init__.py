"""The mapping studio: a web page where finance maps Stripe to the chart of accounts (app.py), its rules (rules.py)."""
