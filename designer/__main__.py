"""`python -m designer` launches the app (or runs a CLI subcommand, like `cnn-designer`)."""

import sys

from designer.launcher import main

sys.exit(main())
