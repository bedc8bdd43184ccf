"""`python -m stripe_sage_pipeline.sandboxes.stripe_emulator ...`"""

import sys

from .server import main

sys.exit(main())
