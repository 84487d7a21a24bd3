"""``python -m tokensidecar`` is the same program as the ``tokensidecar`` console script."""

from tokensidecar.cli import main

raise SystemExit(main())
