"""A stateful Stripe API emulator the official `stripe` SDK cannot tell from Stripe.

from stripe_sage_sandboxes.stripe_emulator import (
    EmulatorConfig, EmulatorState, EmulatorServer, generate, load_golden)

state = EmulatorState(EmulatorConfig(api_key="sk_test_emulator"))
generate(state, seed=7, days=30)            # or load_golden(state, "payout_worked_example.json")
srv = EmulatorServer(state, port=0).start()
client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": srv.url})
...
srv.stop()
"""

from stripe_sage_sandboxes.stripe_emulator.app import create_app
from stripe_sage_sandboxes.stripe_emulator.generator import generate, load_golden
from stripe_sage_sandboxes.stripe_emulator.server import EmulatorServer, main
from stripe_sage_sandboxes.stripe_emulator.store import ApiError, EmulatorConfig, EmulatorState
from stripe_sage_sandboxes.stripe_emulator.webhooks import signature_header

__all__ = [
    "ApiError",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "create_app",
    "generate",
    "load_golden",
    "main",
    "signature_header",
]
