"""``python -m rustcoder`` runs the CLI."""

from .cli import main

main()
