"""``python -m graphdriver`` runs the command line."""

import gc

gc.disable()  # as bin/graphdriver does: graphdriver.cli turns it on again for long work

from graphdriver.cli import main  # noqa: E402

raise SystemExit(main())
