"""``python -m graphdriver`` runs the command line."""

from graphdriver.cli import main

raise SystemExit(main())
