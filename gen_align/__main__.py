"""``python -m gen_align`` runs the command-line interface."""

from gen_align.cli import main

raise SystemExit(main())
