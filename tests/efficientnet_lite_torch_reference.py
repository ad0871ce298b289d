"""An independent PyTorch forward pass of EfficientNet-Lite0 straight from the state dict (torch.nn.functional only).

Written against ml-illustrated/EfficientNet-Lite-PyTorch (a lukemelas EfficientNet-PyTorch fork), the code the
weights were made for: TF-style ``SAME`` padding computed from each layer's input (``F.pad`` with
``floor``/``ceil`` halves), batch norm in inference mode with eps 1e-3, ReLU6, no squeeze-excite, identity skip
when stride 1 and in == out channels, global average pooling, linear classifier. The block structure is read from
the state dict's shapes (kernel size, expansion) and the known stage strides; nothing is shared with the Keras code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BN_EPS = 1e-3
STRIDE2_BLOCKS = {1, 3, 5, 11}  # first block of stages 2, 3, 4 and 6 (0-based block index)


def _pad_same(x, kernel, stride):
    ih, iw = x.shape[-2:]
    oh, ow = math.ceil(ih / stride), math.ceil(iw / stride)
    ph = max((oh - 1) * stride + kernel - ih, 0)
    pw = max((ow - 1) * stride + kernel - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _conv(x, w, stride=1, groups=1):
    k = w.shape[-1]
    return F.conv2d(_pad_same(x, k, stride), w, None, stride, 0, 1, groups)


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                        sd[prefix + ".bias"], training=False, eps=BN_EPS)


def _relu6(x):
    return torch.clamp(x, 0.0, 6.0)


def num_blocks(sd) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))


def forward(sd: dict, images_nchw: torch.Tensor, features_only: bool = False) -> torch.Tensor:
    """Logits ``[B, 1000]`` (or head features ``[B, 1280, h, w]``) for *normalised* NCHW images."""
    x = _relu6(_bn(_conv(images_nchw, sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    for i in range(num_blocks(sd)):
        p = f"_blocks.{i}."
        inputs = x
        if p + "_expand_conv.weight" in sd:
            x = _relu6(_bn(_conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        stride = 2 if i in STRIDE2_BLOCKS else 1
        x = _relu6(_bn(_conv(x, dw, stride=stride, groups=dw.shape[0]), sd, p + "_bn1"))
        x = _bn(_conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if stride == 1 and x.shape[1] == inputs.shape[1]:
            x = x + inputs
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    if features_only:
        return x
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def logits_from_rgb255(sd: dict, images_nhwc_255) -> "torch.Tensor":
    """Logits for ``[B, H, W, 3]`` RGB in [0, 255] (numpy or tensor), normalised as the Lite models expect."""
    x = torch.as_tensor(images_nhwc_255, dtype=torch.float32).permute(0, 3, 1, 2)
    x = (x - 127.0) / 128.0
    with torch.no_grad():
        return forward(sd, x)
