"""`python -m agx` runs the agx CLI."""

from agx.cli import main

main()
