"""Build steps outside the library: `python -m tools.<name>` from the repository root."""
