"""`python -m dskd_cli` is the `dskd` command."""

from dskd_cli.main import main

main()
