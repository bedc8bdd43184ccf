"""`python -m stripe_sage_sandboxes.stripe_emulator ...`"""

import sys

from stripe_sage_sandboxes.stripe_emulator.server import main

sys.exit(main())
