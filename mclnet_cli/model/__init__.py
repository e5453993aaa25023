"""The MCLNet network: two-stream ResNet, projection heads, pooling and BNNeck."""

from mclnet_cli.model.net import FEATURES, SCALES, MCLNet, ModelOutput, build_model

__all__ = ["FEATURES", "SCALES", "MCLNet", "ModelOutput", "build_model"]
