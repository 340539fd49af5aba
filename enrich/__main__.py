"""``python -m enrich`` runs the ``enrich`` command."""

from enrich.cli import main

raise SystemExit(main())
