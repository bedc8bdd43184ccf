"""Local emulators of the external systems (Stripe, Sage Pro) so the pipeline runs with no network."""
