"""`python -m dskd_core` is the `dskd` command."""

from dskd_core.cli import main

main()
