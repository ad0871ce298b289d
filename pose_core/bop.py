"""The BOP dataset format: reading models_info / scene_gt / scene_camera / scene_gt_info, and the BOP19 results CSV.

Units and conventions are BOP's: millimetres, OpenCV camera, model-to-camera poses (``cam_R_m2c`` row-major 3x3,
``cam_t_m2c`` in mm), intrinsics ``cam_K`` row-major 3x3. Every reader raises :class:`BopFormatError` naming the file
(and the entry) when something is missing or malformed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose_core import PoseInputError

RESULTS_CSV_HEADER = ["scene_id", "im_id", "obj_id", "score", "R", "t", "time"]


class BopFormatError(PoseInputError):
    """A BOP file that is missing or malformed; the message names the file and what is wrong."""


def _load_json(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BopFormatError(f"{path}: file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BopFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BopFormatError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _int_key(path, key) -> int:
    try:
        return int(key)
    except ValueError:
        raise BopFormatError(f"{path}: key {key!r} is not an integer id") from None


def _array(path, where, value, shape) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BopFormatError(f"{path}: {where} is not a list of numbers") from None
    if arr.size != int(np.prod(shape)):
        raise BopFormatError(f"{path}: {where} has {arr.size} numbers, expected {int(np.prod(shape))}")
    if not np.all(np.isfinite(arr)):
        raise BopFormatError(f"{path}: {where} has non-finite numbers")
    return arr.reshape(shape)


def load_models_info(path) -> dict[int, dict]:
    """``models_info.json`` -> ``{obj_id: {"diameter": mm, "min_x": ..., "symmetries_continuous": ...}}``."""
    data = _load_json(path)
    info = {}
    for key, entry in data.items():
        obj_id = _int_key(path, key)
        if not isinstance(entry, dict) or "diameter" not in entry:
            raise BopFormatError(f"{path}: object {obj_id} has no 'diameter'")
        info[obj_id] = entry
    return info


def model_info(path, obj_id: int) -> dict:
    """The ``models_info.json`` entry of one object; a clear error if the object is not listed."""
    info = load_models_info(path)
    if obj_id not in info:
        raise BopFormatError(f"{path}: object {obj_id} is not listed (it has {sorted(info)})")
    return info[obj_id]


def is_symmetric(entry: dict) -> bool:
    """True when a models_info entry declares continuous or discrete symmetries (BOP scores those with ADD-S)."""
    return bool(entry.get("symmetries_continuous") or entry.get("symmetries_discrete"))


def _per_image_instances(path, required: tuple[str, ...], parse) -> dict[int, list[dict]]:
    """A BOP file of ``{im_id: [instance, ...]}`` -> ``{im_id: [parse(where, instance), ...]}``; each instance must be
    an object holding the ``required`` keys (the error names the file, the image and the instance)."""
    data = _load_json(path)
    out = {}
    for key, instances in data.items():
        im_id = _int_key(path, key)
        if not isinstance(instances, list):
            raise BopFormatError(f"{path}: image {im_id} should hold a list of instances")
        parsed = []
        for k, inst in enumerate(instances):
            where = f"image {im_id} instance {k}"
            if not isinstance(inst, dict):
                raise BopFormatError(f"{path}: {where} is not an object")
            for name in required:
                if name not in inst:
                    raise BopFormatError(f"{path}: {where} has no '{name}'")
            parsed.append(parse(where, inst))
        out[im_id] = parsed
    return out


def load_scene_gt(path) -> dict[int, list[dict]]:
    """``scene_gt.json`` -> ``{im_id: [{"obj_id": int, "R": [3,3], "t_mm": [3]}, ...]}``."""
    return _per_image_instances(path, ("cam_R_m2c", "cam_t_m2c", "obj_id"), lambda where, inst: {
        "obj_id": int(inst["obj_id"]),
        "R": _array(path, f"{where} cam_R_m2c", inst["cam_R_m2c"], (3, 3)),
        "t_mm": _array(path, f"{where} cam_t_m2c", inst["cam_t_m2c"], (3,)),
    })


def load_scene_camera(path) -> dict[int, dict]:
    """``scene_camera.json`` -> ``{im_id: {"K": [3,3], "depth_scale": float}}``."""
    data = _load_json(path)
    cams = {}
    for key, cam in data.items():
        im_id = _int_key(path, key)
        if not isinstance(cam, dict) or "cam_K" not in cam:
            raise BopFormatError(f"{path}: image {im_id} has no 'cam_K'")
        cams[im_id] = {"K": _array(path, f"image {im_id} cam_K", cam["cam_K"], (3, 3)),
                       "depth_scale": float(cam.get("depth_scale", 1.0))}
    return cams


def load_scene_gt_info(path) -> dict[int, list[dict]]:
    """``scene_gt_info.json`` -> ``{im_id: [{"bbox_obj": [4], "bbox_visib": [4], "visib_fract": float}, ...]}``."""
    return _per_image_instances(path, ("bbox_obj",), lambda where, inst: {
        "bbox_obj": _array(path, f"{where} bbox_obj", inst["bbox_obj"], (4,)),
        "bbox_visib": _array(path, f"{where} bbox_visib", inst.get("bbox_visib", inst["bbox_obj"]), (4,)),
        "visib_fract": float(inst.get("visib_fract", 1.0)),
    })


@dataclass
class BopTestImage:
    """One image of a BOP test scene with the ground-truth instances of one object."""
    scene_id: int
    im_id: int
    rgb_path: Path
    K: np.ndarray
    instances: list = field(default_factory=list)  # dicts: R, t_mm, obj_id, and bbox_obj/visib_fract when known
    depth_path: Path | None = None  # depth/<im_id>.png (16-bit, mm = value * depth_scale) when the scene has one
    depth_scale: float = 1.0


TEST_TARGETS_FILE = "test_targets_bop19.json"  # BOP19's list of what to localize, at the dataset root
DEFAULT_MIN_VISIB = 0.1  # BOP19 scores instances at least 10% visible (scene_gt_info.json's visib_fract)


def load_test_targets(bop_root) -> set[tuple[int, int, int]] | None:
    """``{(scene_id, im_id, obj_id)}`` of BOP19's ``test_targets_bop19.json`` at ``bop_root``; None without one."""
    path = Path(bop_root) / TEST_TARGETS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise BopFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise BopFormatError(f"{path}: expected a list of {{scene_id, im_id, obj_id, inst_count}} entries")
    out = set()
    for k, entry in enumerate(data):
        try:
            out.add((int(entry["scene_id"]), int(entry["im_id"]), int(entry["obj_id"])))
        except (KeyError, TypeError, ValueError):
            raise BopFormatError(f"{path}: entry {k} is not {{scene_id, im_id, obj_id, inst_count}}: {entry}") from None
    return out


def list_test_images(bop_root, obj_id: int, split: str = "test", min_visib: float = 0.0,
                     targets: set | None = None) -> list[BopTestImage]:
    """Every image of ``bop_root/<split>/<scene>/`` that shows ``obj_id``, with its instances of that object.

    ``min_visib``: instances whose ``visib_fract`` (scene_gt_info.json) is below it are left out (instances of a
    scene without scene_gt_info.json are kept: their visibility is unknown). ``targets``: from
    :func:`load_test_targets`; images it does not list for ``obj_id`` are left out."""
    root = Path(bop_root) / split
    if not root.is_dir():
        raise BopFormatError(f"{root}: no '{split}' folder in the BOP root {bop_root}")
    images = []
    for scene_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        scene_id = _int_key(scene_dir, scene_dir.name)
        gt = load_scene_gt(scene_dir / "scene_gt.json")
        cams = load_scene_camera(scene_dir / "scene_camera.json")
        gt_info_path = scene_dir / "scene_gt_info.json"
        gt_info = load_scene_gt_info(gt_info_path) if gt_info_path.is_file() else {}
        for im_id in sorted(gt):
            if im_id not in cams:
                raise BopFormatError(f"{scene_dir / 'scene_camera.json'}: no camera for image {im_id}")
            instances = []
            for k, inst in enumerate(gt[im_id]):
                if inst["obj_id"] != obj_id:
                    continue
                inst = dict(inst)
                if im_id in gt_info and k < len(gt_info[im_id]):
                    inst.update(gt_info[im_id][k])
                if inst.get("visib_fract", 1.0) < min_visib:
                    continue
                instances.append(inst)
            if not instances or (targets is not None and (scene_id, im_id, obj_id) not in targets):
                continue
            rgb = next((scene_dir / sub / f"{im_id:06d}{ext}" for sub in ("rgb", "gray")
                        for ext in (".png", ".jpg") if (scene_dir / sub / f"{im_id:06d}{ext}").is_file()), None)
            if rgb is None:
                raise BopFormatError(f"{scene_dir}: no image file rgb/{im_id:06d}.png (or .jpg)")
            depth = scene_dir / "depth" / f"{im_id:06d}.png"
            images.append(BopTestImage(scene_id, im_id, rgb, cams[im_id]["K"], instances,
                                       depth if depth.is_file() else None, cams[im_id]["depth_scale"]))
    return images


def object_ids_in(bop_root, split: str = "test") -> list[int]:
    """The object ids annotated anywhere in ``bop_root/<split>/*/scene_gt.json``, sorted."""
    root = Path(bop_root) / split
    if not root.is_dir():
        raise BopFormatError(f"{root}: no '{split}' folder in the BOP root {bop_root}")
    ids = set()
    for scene_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for instances in load_scene_gt(scene_dir / "scene_gt.json").values():
            ids.update(i["obj_id"] for i in instances)
    return sorted(ids)


def load_depth_mm(image: BopTestImage) -> np.ndarray:
    """The depth image of a test image in mm (``[H, W]`` float32, 0 = no measurement): BOP's 16-bit PNG times the
    image's ``depth_scale`` (scene_camera.json). Raises :class:`BopFormatError` naming the file when there is none
    or it cannot be read."""
    from PIL import Image

    if image.depth_path is None:
        raise BopFormatError(f"scene {image.scene_id} image {image.im_id}: no depth image (depth/{image.im_id:06d}.png "
                             f"next to {image.rgb_path.parent.name}/)")
    try:
        raw = np.asarray(Image.open(image.depth_path))
    except Exception as e:
        raise BopFormatError(f"{image.depth_path}: cannot read the depth image ({e})") from None
    if raw.ndim != 2:
        raise BopFormatError(f"{image.depth_path}: a depth image has one channel, this one has shape {raw.shape}")
    return raw.astype(np.float32) * np.float32(image.depth_scale)


def find_model_file(models_dir, obj_id: int) -> Path:
    """``obj_0000NN.{ply,obj,...}`` of ``obj_id`` in a BOP models folder."""
    for ext in (".ply", ".obj", ".glb", ".stl"):
        p = Path(models_dir) / f"obj_{obj_id:06d}{ext}"
        if p.is_file():
            return p
    raise BopFormatError(f"{models_dir}: no model file obj_{obj_id:06d}.ply/.obj for object {obj_id}")


@dataclass
class PoseEstimate:
    """One row of a BOP19 results CSV. ``R`` is [3,3], ``t_mm`` [3] in mm, ``time_s`` in seconds (-1 if unknown)."""
    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t_mm: np.ndarray
    time_s: float = -1.0


def write_results_csv(path, estimates: list[PoseEstimate]) -> None:
    """Writes the BOP19 CSV: ``scene_id,im_id,obj_id,score,R,t,time`` with R row-major and t in mm,
    each space-separated, numbers with full float64 precision (``repr``), so reading back gives identical values."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULTS_CSV_HEADER)
        for e in estimates:
            writer.writerow([
                int(e.scene_id), int(e.im_id), int(e.obj_id), repr(float(e.score)),
                " ".join(repr(float(x)) for x in np.asarray(e.R, np.float64).reshape(9)),
                " ".join(repr(float(x)) for x in np.asarray(e.t_mm, np.float64).reshape(3)),
                repr(float(e.time_s)),
            ])


def read_results_csv(path) -> list[PoseEstimate]:
    """Reads a BOP19 results CSV; a malformed row raises :class:`BopFormatError` naming the file and line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BopFormatError(f"{path}: file not found")
    estimates = []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != RESULTS_CSV_HEADER:
        raise BopFormatError(f"{path}: line 1 must be the header {','.join(RESULTS_CSV_HEADER)}")
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(RESULTS_CSV_HEADER):
            raise BopFormatError(f"{path}: line {line_no} has {len(row)} fields, expected {len(RESULTS_CSV_HEADER)}")
        try:
            R = np.array([float(x) for x in row[4].split()], dtype=np.float64)
            t = np.array([float(x) for x in row[5].split()], dtype=np.float64)
            est = PoseEstimate(int(row[0]), int(row[1]), int(row[2]), float(row[3]), R, t, float(row[6]))
        except ValueError as e:
            raise BopFormatError(f"{path}: line {line_no} is malformed ({e})") from None
        if R.size != 9 or t.size != 3:
            raise BopFormatError(f"{path}: line {line_no}: R needs 9 numbers and t 3, got {R.size} and {t.size}")
        est.R, est.t_mm = R.reshape(3, 3), t
        estimates.append(est)
    return estimates
