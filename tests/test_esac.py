"""ESAC (pose_net/esac.py): the spread of hypotheses over experts, the gating's REINFORCE gradient, the expected
loss through the solver, and a two-object model trained on renderings that routes each object to its expert."""
import json

import numpy as np
import pytest

TINY_INPUT = 64  # the side of the renderings and the network input (as conftest.TINY_INPUT)

pytest.importorskip("tensorflow")


def test_allocation_follows_the_gating_probabilities(tf):
    from pose_net.esac import allocate_hypotheses

    logits = tf.constant([[3.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    counts = allocate_hypotheses(logits, 4000, seed=1).numpy()
    assert counts.dtype == np.int32 and (counts.sum(axis=1) == 4000).all()
    p = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(counts / 4000.0, p, atol=0.03)
    np.testing.assert_array_equal(counts, allocate_hypotheses(logits, 4000, seed=1).numpy())  # stateless
    assert not np.array_equal(counts, allocate_hypotheses(logits, 4000, seed=2).numpy())


def test_gating_gradient_raises_the_expert_with_the_lower_loss(tf):
    """REINFORCE: draws that gave more hypotheses to the expert whose poses are better have a lower loss, so
    a descent step on the surrogate must raise that expert's probability (whatever the starting logits)."""
    from pose_net.esac import allocate_hypotheses, gating_surrogate

    for start in ([0.0, 0.0], [-1.0, 1.0], [1.0, -1.0]):
        logits = tf.Variable([start] * 8)
        counts = tf.stack([allocate_hypotheses(logits, 16, seed=k) for k in range(6)])  # [K, B, 2]
        losses = tf.cast(counts[..., 1], tf.float32) / 16.0  # expert 1's hypotheses cost 1, expert 0's cost 0
        with tf.GradientTape() as tape:
            s = tf.reduce_mean(gating_surrogate(logits, counts, losses, tf.ones_like(losses, tf.bool)))
        g = tape.gradient(s, logits).numpy()
        assert (g[:, 0] < 0).all() and (g[:, 1] > 0).all(), (start, g)
        p0 = tf.nn.softmax(logits)[:, 0]
        logits.assign_sub(0.5 * g)
        assert (tf.nn.softmax(logits)[:, 0] > p0).numpy().all()


def test_gating_surrogate_leaves_out_crops_without_hypotheses(tf):
    from pose_net.esac import gating_surrogate

    logits = tf.Variable([[0.0, 0.0], [0.0, 0.0]])
    counts = tf.constant([[[4, 0], [4, 0]], [[0, 4], [0, 4]]])
    losses = tf.constant([[0.0, 0.0], [1.0, 1.0]])
    ok = tf.constant([[True, False], [True, True]])
    with tf.GradientTape() as tape:
        s = tf.reduce_sum(gating_surrogate(logits, counts, losses, ok))
    g = tape.gradient(s, logits).numpy()
    assert np.abs(g[1]).sum() == 0 and np.abs(g[0]).sum() > 0


def _plane_outputs(tf, grid=64, f=150.0):
    """A planar object (the square |x|, |y| <= 50 mm of the plane z = 0) seen tilted at 500 mm: the exact object
    coordinates of every grid pixel that sees it (expert 0), and random coordinates for expert 1."""
    from pose_core.symmetry import Symmetries
    from pose_net.coordinates import CoordinateFrame
    from pose_net.esac import ExpertSpec
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("xyz", [25, -15, 10], degrees=True).as_matrix()
    t = np.array([5.0, -3.0, 500.0])
    K = np.array([[f, 0, grid / 2 - 0.5], [0, f, grid / 2 - 0.5], [0, 0, 1]])
    v, u = np.mgrid[0:grid, 0:grid].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    n = R[:, 2]
    lam = (n @ t) / (rays @ n)
    X = (lam[..., None] * rays - t) @ R  # R^T (X_c - t)
    inside = (np.abs(X[..., 0]) <= 50) & (np.abs(X[..., 1]) <= 50)
    gx, gy = np.meshgrid(np.linspace(-50, 50, 11), np.linspace(-50, 50, 11))
    points = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], -1).astype(np.float32)
    points_box = np.concatenate([points, [[0, 0, 2.0], [0, 0, -2.0]]]).astype(np.float32)  # a box with depth
    frame = CoordinateFrame.from_points(points_box)
    norm = (X - frame.centre_mm) / frame.size_mm
    rng = np.random.default_rng(0)
    experts = [ExpertSpec(k + 1, f"plane{k}", "", None, 141.4, False, points, frame, Symmetries.from_json(
        {"discrete": [], "continuous": []})) for k in range(2)]
    mask_logit = np.where(inside, 8.0, -8.0)[None, ..., None].astype(np.float32)
    outputs = {"coords_0": tf.constant(norm[None].astype(np.float32)), "mask_0": tf.constant(mask_logit),
               "coords_1": tf.constant(rng.uniform(-0.5, 0.5, norm[None].shape).astype(np.float32)),
               "mask_1": tf.constant(mask_logit)}
    return outputs, experts, R, t, K


def test_expected_loss_through_the_solver(tf):
    """Expert 0 explains the crop exactly, expert 1 not at all: with the gating undecided the expected loss is
    finite, the true expert's hypotheses win the selection, the gradient reaches the true expert's coordinates (finite for both), and
    where the spread of hypotheses matters the gating's gradient favours expert 0."""
    from pose_net.esac import EsacSettings, esac_expected_loss

    outputs, experts, R, t, K = _plane_outputs(tf)
    coords = {k: tf.Variable(outputs[k]) for k in ("coords_0", "coords_1")}
    gating = tf.Variable([[0.0, 0.0]])
    settings = EsacSettings(hypotheses=32, draws=4)
    with tf.GradientTape() as tape:
        outs = dict(outputs, gating=gating, **coords)
        loss, terms = esac_expected_loss(outs, experts, tf.constant([0]), tf.constant(R[None], tf.float32),
                                         tf.constant(t[None], tf.float32), tf.constant(K[None], tf.float32),
                                         settings, seed=3)
    grads = tape.gradient(loss, [gating, coords["coords_0"], coords["coords_1"]])
    assert np.isfinite(loss.numpy()) and float(terms["esac_ok"]) == 1.0
    assert float(terms["routed"]) == 1.0  # the exact expert's hypotheses score highest
    assert float(terms["esac"]) < 5.0  # degrees + 0.1 * mm: the exact coordinates give the pose
    for g in grads[1:]:
        assert g is not None and np.isfinite(g.numpy()).all()
    assert np.abs(grads[1].numpy()).sum() > 0  # the true expert's coordinates, through its refined poses

    # With 2 hypotheses a draw, some draws give expert 0 none: their loss is the wrong expert's, and the gating's
    # gradient says to raise expert 0. (With 32, every draw reaches expert 0 and the allocation does not matter.)
    with tf.GradientTape() as tape:
        outs = dict(outputs, gating=gating, **coords)
        loss, terms = esac_expected_loss(outs, experts, tf.constant([0]), tf.constant(R[None], tf.float32),
                                         tf.constant(t[None], tf.float32), tf.constant(K[None], tf.float32),
                                         EsacSettings(hypotheses=2, draws=16), seed=3)
    g = tape.gradient(loss, gating).numpy()
    assert 0.0 < float(terms["routed"]) < 1.0
    assert g[0, 0] < 0 < g[0, 1]


def test_wrong_expert_loss_is_the_clamped_worst_case(tf):
    from pose_net.dsac import DsacSettings
    from pose_net.esac import wrong_expert_loss

    cut = DsacSettings().cut()
    w = wrong_expert_loss("angle_translation", tf.constant([100.0]), 0.1, cut, 64.0).numpy()
    assert w[0] == pytest.approx(np.sqrt(cut * 190.0))
    assert wrong_expert_loss("add", tf.constant([100.0]), 0.1, 1.0, 64.0).numpy()[0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """90 renderings each of the built-in toy and box at 64x64 (3 shards, the last validates), randomization none."""
    from render.testing import run_many

    root = tmp_path_factory.mktemp("esac")
    jobs = [(root / name, dict(mesh=name, num_images=90, num_shards=3, seed=5 + k, image_size=TINY_INPUT,
                               workers=1, randomization="none")) for k, name in enumerate(("toy", "box"))]
    for code, err in run_many(jobs):
        assert code == 0, err[-2000:]
    return root


def test_two_object_model_routes_each_object_to_its_expert(tf, two_objects, tmp_path):
    """Stage experts on renderings of two objects, then the crops of each object's validation renderings go to
    its expert (gating), and stage esac runs through the solver from it and resumes."""
    from pose_net import data as pdata
    from pose_net.esac import MODEL_FILE, EsacEstimator, EsacSettings, load_esac, train_esac

    datasets = [str(two_objects / "toy"), str(two_objects / "box")]
    model_dir = tmp_path / "experts"
    summary = train_esac(datasets, model_dir, "experts", time_budget_min=5.0, batch_size=16, learning_rate=3e-3,
                         input_size=TINY_INPUT, backbone="small", backbone_weights="none", progress=False,
                         max_steps=120)
    assert summary["steps"] == 120 and (model_dir / MODEL_FILE).is_file()
    est = EsacEstimator(model_dir)
    config, experts = load_esac(model_dir)
    assert [e.obj_id for e in experts] == est.obj_ids and config["stage"] == "experts"
    cfg = pdata.PipelineConfig(input_size=TINY_INPUT)
    right = total = 0
    for m, d in enumerate(datasets):
        for batch in pdata.make_dataset(d, cfg, 16, "val", training=False):
            pred = np.argmax(est.model(batch["image"], training=False)["gating"].numpy(), axis=1)
            right += int(np.sum(pred == m))
            total += len(pred)
    assert total >= 40 and right / total >= 0.8, (right, total)

    esac_dir = tmp_path / "esac"
    s2 = train_esac(datasets, esac_dir, "esac", time_budget_min=5.0, batch_size=4, init_from=model_dir,
                    settings=EsacSettings(hypotheses=16), input_size=TINY_INPUT, backbone="small", progress=False,
                    max_steps=2)
    assert s2["steps"] == 2 and all(np.isfinite(v) for v in s2["last_steps_mean"].values())
    again = train_esac(datasets, esac_dir, "esac", time_budget_min=5.0, batch_size=4, init_from=model_dir,
                       settings=EsacSettings(hypotheses=16), input_size=TINY_INPUT, backbone="small",
                       progress=False, max_steps=3)
    assert again["steps"] == 3  # resumed at step 2
    assert json.loads((esac_dir / "esac.json").read_text())["stage"] == "esac"


def test_bad_input_is_named(tf, two_objects, tmp_path):
    from pose_core import PoseInputError
    from pose_net.esac import EsacEstimator, train_esac

    toy = str(two_objects / "toy")
    with pytest.raises(PoseInputError, match="at least 2 objects"):
        train_esac([toy], tmp_path / "a", backbone="small", backbone_weights="none")
    with pytest.raises(PoseInputError, match="different objects"):
        train_esac([toy, toy], tmp_path / "b", backbone="small", backbone_weights="none")
    with pytest.raises(PoseInputError, match="init_from"):
        train_esac([toy, str(two_objects / "box")], tmp_path / "c", "esac", backbone="small",
                   backbone_weights="none")
    with pytest.raises(PoseInputError, match="esac.json"):
        EsacEstimator(tmp_path)
