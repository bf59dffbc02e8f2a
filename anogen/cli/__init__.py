"""The command line: thin Typer commands over the library. No ML imports at module top."""
