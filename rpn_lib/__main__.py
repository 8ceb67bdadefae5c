"""``python -m rpn_lib``: the same as the ``rpn-lib`` command."""

from rpn_lib.cli import main

raise SystemExit(main())
