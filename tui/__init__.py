"""The Textual TUI for sa3ckpt (a separate package: the CLI imports it only for `sa3ckpt tui`).

It calls the sa3ckpt library directly, never the CLI.
"""
