"""`python -m exporter.cli`."""

import sys

from exporter.cli.main import main

sys.exit(main())
