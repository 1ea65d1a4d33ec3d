"""Runnable examples; `make run` hosts them in the dev worker."""
