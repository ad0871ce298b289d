"""Backbones with ImageNet weights that work offline (converted once, then cached)."""

from pose_net.backbones.efficientnet_lite import (  # noqa: F401
    build_efficientnet_lite0,
    build_lite0_backbone,
    ensure_pretrained_weights,
    freeze_batch_norm,
    freeze_model,
    load_converted_weights,
    pretrained_weights_path,
)
