"""``python -m closedloop`` runs the CLI."""

from closedloop.cli import main

main()
