"""Command-line interface (typer): thin, draws progress, turns errors into messages."""
