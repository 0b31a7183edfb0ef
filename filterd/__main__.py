from __future__ import annotations

from filterd.cli import main

raise SystemExit(main())
