"""``python -m banana_async``: the ``banana-async`` command line."""

from banana_async.cli import main

raise SystemExit(main())
