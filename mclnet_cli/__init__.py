"""mclnet: MCLNet for visible-infrared person re-identification."""

__version__ = "0.2.0"
