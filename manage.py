#!/usr/bin/env python
"""The taskplatform CLI: ``python manage.py --help``."""

from taskplatform.cli import main

if __name__ == "__main__":
    main()
