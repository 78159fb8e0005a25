"""``python -m sipserver``: the same as the ``sipserver`` console script."""

from sipserver.cli import main

raise SystemExit(main())
