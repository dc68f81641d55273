"""`python -m reshard.cli`: the same as the `reshard` command."""

from reshard.cli import main

main()
