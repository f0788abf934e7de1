"""``python -m flower_qlearn`` = the ``flower-qlearn`` command."""

from .cli import main

if __name__ == "__main__":
    main()
