"""`python -m aegisctl` = `ag`."""

from .cli import main

main()
