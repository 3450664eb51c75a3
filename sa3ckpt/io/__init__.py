"""Reading and writing checkpoint files: strict parsers and crash-safe writers."""
