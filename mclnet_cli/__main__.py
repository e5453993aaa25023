"""Entry point for ``python -m mclnet_cli``."""

from mclnet_cli.cli.app import main

if __name__ == "__main__":
    main()
