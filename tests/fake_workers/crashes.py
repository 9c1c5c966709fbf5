"""Exits non-zero without ever opening Pipes, like a worker killed before it started."""

import sys

print("crashes: segfault-like death before Pipes opened", file=sys.stderr)
sys.exit(3)
