"""Operations over checkpoints and models: apply, inspect, validate, convert, merge, combine."""
