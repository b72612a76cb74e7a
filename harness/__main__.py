"""`python -m supportbench`, which `accelerate launch -m supportbench` runs in each process."""

import sys

from supportbench.cli import main

sys.exit(main())
