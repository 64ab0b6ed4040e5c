"""The ``mmedagent`` commands, one module per group; each parses options and calls the packages."""
