"""``python -m ondevice.cli`` runs the ``ondevice`` command."""

import sys

from ondevice.cli import main

sys.exit(main())
