"""Mutation fuzzing of every reader (see fuzz/fuzz_readers.py)."""
