"""mclnet: MCLNet for visible-infrared person re-identification."""

__version__ = "0.2.0"


def __getattr__(name: str):
    """``mclnet_cli.api`` on first use (it imports torch, so ``import mclnet_cli`` stays light)."""
    if name == "api":
        import importlib

        return importlib.import_module("mclnet_cli.api")
    raise AttributeError(f"module 'mclnet_cli' has no attribute {name!r}")
