"""Opens Pipes, does nothing, exits 0: a worker that forgot to report."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes():
    pass
