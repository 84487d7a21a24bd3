"""Secret update → token file propagation (kept for old links; ``bench/propagation.py`` does it all).

.venv/bin/python bench/propagation_secret.py [--changes 500]
"""

from __future__ import annotations

import sys

import propagation

if __name__ == "__main__":
    sys.argv[1:1] = ["--sources", "kubernetes-secret"]
    raise SystemExit(propagation.main())
