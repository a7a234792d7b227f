"""``python -m kumulus.webhook``: the same as the ``kumulus-webhook`` console script."""

from kumulus.webhook.main import main

raise SystemExit(main())
