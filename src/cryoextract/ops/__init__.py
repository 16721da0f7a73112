"""Pure array functions. They never touch files. Conventions: docs/conventions.md."""
