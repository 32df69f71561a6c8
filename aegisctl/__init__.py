"""aegisctl (also `ag`, `aegis`): the command-line client of aegisd."""
