"""Execution: the only layer that knows dask.distributed."""
