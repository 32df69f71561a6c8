"""`python -m aegisctl` = `ag`."""

from aegisctl.cli import main

main()
