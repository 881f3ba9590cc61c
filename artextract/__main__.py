"""``python -m artextract`` runs the CLI."""
import sys

from artextract.cli import main

sys.exit(main())
