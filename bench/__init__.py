"""``make bench``: N concurrent transcoded calls through the daemon, loss, latency and CPU.

See :mod:`bench.__main__` for the command line and docs/benchmarks.md for the
method and the latest figures.
"""
