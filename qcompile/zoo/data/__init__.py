"""Evaluation data sets for the zoo models, read from locally installed files (never downloaded at run time)."""

__all__: list[str] = []
