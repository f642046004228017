"""``python -m deepretrieval.cli``."""
import sys

from deepretrieval.cli import main

sys.exit(main())
