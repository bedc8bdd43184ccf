"""`python -m stripe_sage_pipeline.cli` runs the `stripe-sage` command."""

import sys

from stripe_sage_pipeline.cli import main

sys.exit(main())
