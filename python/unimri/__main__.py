"""``python -m unimri``: the unimri command (see :mod:`unimri.cli`)."""
from unimri.cli import main

raise SystemExit(main())
