"""Dagster wiring, one folder per stage; the rules live in plain modules beside it."""
