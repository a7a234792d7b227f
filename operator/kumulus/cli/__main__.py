"""``python -m kumulus.cli``: the same as the ``kumulus`` console script."""

from kumulus.cli import main

raise SystemExit(main())
