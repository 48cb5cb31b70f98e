"""Sub-commands of the `megabyte` CLI: one module each, discovered by `megabyte.cli`."""
