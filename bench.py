#!/usr/bin/env python
"""attnbench entry point: python bench.py --grid [FILE] | --list  (see README.md)."""
import sys

from attnbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
