"""A Sage Intacct REST API v1 emulator (loopback, in memory) for the pipeline's `intacct` target.

Held to Sage's OpenAPI documents in reference/sage-intacct-openapi/ by tests/integration/test_intacct.py.
"""

from stripe_sage_sandboxes.intacct.app import API_PREFIX, IntacctEmulatorApp, IntacctEmulatorConfig
from stripe_sage_sandboxes.intacct.server import IntacctEmulatorServer

__all__ = ["API_PREFIX", "IntacctEmulatorApp", "IntacctEmulatorConfig", "IntacctEmulatorServer"]
