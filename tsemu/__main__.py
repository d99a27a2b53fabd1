"""`python -m tsemu`: the same command line as `tsemu`."""

from tsemu.cli.app import main

main()
