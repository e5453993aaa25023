"""The MCLNet network: two-stream ResNet, projection heads, pooling and BNNeck."""

from mclnet_cli.model.net import FEATURES, OUTPUTS, SCALES, MCLNet, ModelOutput, build_model

__all__ = ["FEATURES", "OUTPUTS", "SCALES", "MCLNet", "ModelOutput", "build_model"]
