"""``python -m ondevice.cli`` runs the ``ondevice`` command."""

import sys

from ondevice.cli.main import main

sys.exit(main())
