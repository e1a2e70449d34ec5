"""``python -m jakiro.ge_data --config NAME [--set section.key=value ...] [--max-shards K] [--quiet]``."""

from jakiro.ge_data.generate import main

raise SystemExit(main())
