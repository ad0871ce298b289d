"""Shared steps of the experiments: render a dataset, export a rendered test set in BOP form, train, evaluate.

Every step is skipped when its output is already complete, so an experiment started again resumes where it stopped
(rendering and training resume themselves from their own partial outputs).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose_core import shared_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()

# The real test sets of ../shared/data: folder -> (BOP obj_id, the built-in object of the same kind)
REAL_SETS = {"ycbv_banana": (10, "toy"), "ycbv_box": (2, "box"), "ycbv_can": (1, "symmetric")}
# YCB-V objects shown in ../shared/data/ycbv_backgrounds, per real set: photos showing the object are left out
THESIS = {  # ADD / ADD-S in %, thesis on its real objects
    "toy": (43.9, 48.7), "box": (69.0, 74.3), "symmetric": (36.2, 60.7),
}


@dataclass
class TestObject:
    name: str
    mesh: str
    obj_id: int
    diameter_mm: float
    symmetric: bool
    real_root: Path | None = None  # the real BOP test set, for objects of ../shared/data
    note: str = ""


def resolve_object(name: str) -> TestObject:
    """A real set of ../shared/data (``ycbv_banana``: its mesh, obj_id and photos), a built-in object, or a user's
    mesh file. A real set whose folder is absent falls back to the built-in object of the same kind (no photos)."""
    from pose_core import bop
    from pose_core.mesh import load_mesh, mesh_diameter
    from pose_core.objects import BUILTIN_OBJECTS, builtin_model_path

    note = ""
    if name in REAL_SETS:
        obj_id, kind = REAL_SETS[name]
        root = SHARED_DATA / name
        if root.is_dir():
            models = root / "models"
            entry = bop.model_info(models / "models_info.json", obj_id)
            return TestObject(name, str(bop.find_model_file(models, obj_id)), obj_id, float(entry["diameter"]),
                              BUILTIN_OBJECTS[kind].symmetric, root)
        note = f"{root} is absent: built-in `{kind}` instead of {name}, no real photos"
        name = kind
    if name not in BUILTIN_OBJECTS:  # a user's mesh file
        return TestObject(Path(name).stem, name, 1, mesh_diameter(load_mesh(name)), False)
    spec = BUILTIN_OBJECTS[name]
    path = builtin_model_path(name)
    return TestObject(name, str(path), spec.obj_id, mesh_diameter(load_mesh(path)), spec.symmetric, None, note)


def run(cmd: list[str], log: Path | None = None) -> None:
    """Runs a command (a python -m module of this repo), streaming its output; raises on failure."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run(cmd, cwd=REPO_ROOT)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:] if log and log.is_file() else ""
        raise RuntimeError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


INPUTS_SUFFIX = ".inputs.json"  # beside a cached result: the fingerprint of the files it was computed from


def inputs_fingerprint(inputs, base: Path) -> dict[str, list[int]]:
    """``{path relative to base: [size in bytes, modification time in ns]}`` of the files ``inputs`` names; a
    folder stands for the files directly inside it (a model folder: its config and exported network; its
    subfolders, such as evaluations written into it, are not inputs). A missing path is recorded as ``[-1, -1]``."""
    files = []
    for p in map(Path, inputs):
        files += sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    out = {}
    for f in files:
        st = f.stat() if f.is_file() else None
        out[os.path.relpath(f, base)] = [st.st_size, st.st_mtime_ns] if st else [-1, -1]
    return out


def cached_json(path: Path, compute, inputs=()) -> dict:
    """The JSON in ``path`` when it exists, else ``compute()``'s result written there (a table's finished
    evaluations are kept and reused, so a rerun goes on where it stopped).

    ``inputs``: the files or folders (:func:`inputs_fingerprint`) the result is computed from, such as the model
    folders an evaluation runs: their fingerprint is kept beside the result (``NAME.inputs.json``), and a cached
    result whose inputs changed since (a model trained again) is computed again. A cached result without that file
    (written before fingerprints were kept) is taken as computed from the inputs as they are now."""
    path = Path(path)
    record = path.with_name(path.stem + INPUTS_SUFFIX)
    fingerprint = inputs_fingerprint(inputs, path.parent)
    if path.is_file():
        kept = json.loads(record.read_text()) if inputs and record.is_file() else None
        if kept is None or kept == fingerprint:
            if inputs and kept is None:  # (a cache from before fingerprints: adopted)
                record.write_text(json.dumps(fingerprint, indent=1))
            return json.loads(path.read_text())
        print(f"{path}: its inputs changed since it was computed; computing it again", flush=True)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    if inputs:
        record.write_text(json.dumps(fingerprint, indent=1))
    return result


def report_paths(value):
    """``value`` (JSON-like: dicts, lists, strings) with every absolute path inside the repository or beside it
    named as reports name paths (:func:`pose_net.evaluate.report_path`): for generated files, which must not carry
    the machine's folders (cached evaluations may hold absolute ones)."""
    from pose_net.evaluate import report_path

    if isinstance(value, dict):
        return {k: report_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [report_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return report_path(value)
    return value


def dataset_complete(out: Path) -> bool:
    info = out / "dataset.json"
    if not info.is_file():
        return False
    shards = json.loads(info.read_text()).get("shards", [])
    return bool(shards) and all((out / (s["file"] if isinstance(s, dict) else s)).is_file() for s in shards)


def render_dataset(mesh: str, out: Path, num_images: int, seed: int, mode: str = "complete", image_size: int = 128,
                   workers: int = 2, num_shards: int = 4, extra: list[str] | None = None, log: Path | None = None):
    """``python -m render.generate`` unless ``out`` already holds the finished dataset; a finished dataset of
    another size or resolution is refused (``SystemExit`` naming the folder), never silently reused."""
    if dataset_complete(out):
        have = json.loads((out / "dataset.json").read_text())
        textures = next((x.split("=", 1)[1] for x in extra or [] if x.startswith("--texture_photos=")), None)
        had = have.get("flags", {}).get("texture_photos")
        if textures != had:
            raise SystemExit(f"{out} holds renderings made with --texture_photos={had}, this run wants {textures}: "
                             "remove that folder or choose another output folder")
        if (have.get("num_images"), have.get("image_size")) != (num_images, image_size):
            raise SystemExit(f"{out} holds {have.get('num_images')} renderings of {have.get('image_size')} pixels, "
                             f"this run wants {num_images} of {image_size}: remove that folder or choose another "
                             "output folder")
        print(f"dataset {out} is complete, skipping", flush=True)
        return
    cmd = [sys.executable, "-m", "render.generate", f"--mesh={mesh}", f"--out={out}", f"--num_images={num_images}",
           f"--seed={seed}", f"--randomization={mode}", f"--image_size={image_size}", f"--workers={workers}",
           f"--num_shards={num_shards}"] + (extra or [])
    run(cmd, log)


# The rendered test sets' depth images hold the object's rendered depth; the rest of the image, which the renderer
# gives no depth (a background photo or noise), is a fronto-parallel wall this many diameters behind the object's
# centre, so pixels the network wrongly calls "object" meet a surface, as in a real RGB-D image, not a hole.
RENDERED_WALL_BEHIND_DIAMETERS = 1.0


def export_bop_test_set(dataset_dir: Path, out_root: Path, obj_id: int, mesh_path: str, diameter_mm: float,
                        symmetric: bool, scene_id: int = 0) -> Path:
    """Writes a rendered dataset as a BOP test set (rgb/, depth/, scene_gt.json, scene_camera.json,
    scene_gt_info.json, models/), so rendered and real test sets go through the same evaluation. A set exported
    before depth/ was written gets its depth images added."""
    from PIL import Image

    from render.dataset import read_samples

    scene = out_root / "test" / f"{scene_id:06d}"
    done = out_root / ".complete"
    if done.is_file():
        if not (out_root / ".depth_complete").is_file():
            _export_depth(dataset_dir, scene, diameter_mm, out_root / ".depth_complete")
        return out_root
    for sub in ("rgb", "depth"):
        (scene / sub).mkdir(parents=True, exist_ok=True)
    gt, cams, gt_info = {}, {}, {}
    for k, s in enumerate(read_samples(dataset_dir)):
        Image.fromarray(s["image"]).save(scene / "rgb" / f"{k:06d}.png")
        gt[str(k)] = [{"cam_R_m2c": np.asarray(s["R"]).reshape(9).tolist(),
                       "cam_t_m2c": np.asarray(s["t_mm"]).tolist(), "obj_id": obj_id}]
        cams[str(k)] = {"cam_K": np.asarray(s["K"]).reshape(9).tolist(),
                        "depth_scale": _write_depth(s, diameter_mm, scene / "depth" / f"{k:06d}.png")}
        gt_info[str(k)] = [{"bbox_obj": np.asarray(s["bbox_xywh"]).tolist(),
                            "bbox_visib": np.asarray(s["bbox_xywh"]).tolist(),
                            "visib_fract": float(s["visib_fract"])}]
    (scene / "scene_gt.json").write_text(json.dumps(gt))
    (scene / "scene_camera.json").write_text(json.dumps(cams))
    (scene / "scene_gt_info.json").write_text(json.dumps(gt_info))
    (out_root / ".depth_complete").write_text("ok")
    models = out_root / "models"
    models.mkdir(exist_ok=True)
    src = Path(mesh_path)
    for f in src.parent.glob(src.stem + ".*"):
        shutil.copy(f, models / f"obj_{obj_id:06d}{f.suffix}")
    for f in src.parent.glob("*.png"):  # textures referenced by an .mtl keep their names
        shutil.copy(f, models / f.name)
    entry = {"diameter": diameter_mm}
    if symmetric:
        entry["symmetries_continuous"] = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
    (models / "models_info.json").write_text(json.dumps({str(obj_id): entry}))
    done.write_text("ok")
    return out_root


def _write_depth(sample: dict, diameter_mm: float, path: Path) -> float:
    """Writes a rendering's depth/ image (BOP: 16-bit, mm = value * depth_scale): its object depth, and the wall of
    :data:`RENDERED_WALL_BEHIND_DIAMETERS` elsewhere; returns its depth_scale."""
    from PIL import Image

    from render.records import depth_scale_for

    depth = np.asarray(sample["depth_mm"], np.float64)
    wall = float(sample["t_mm"][2]) + RENDERED_WALL_BEHIND_DIAMETERS * diameter_mm
    depth = np.where(depth > 0, depth, wall)
    scale = float(depth_scale_for(depth.max()))
    Image.fromarray(np.rint(depth / scale).astype(np.uint16)).save(path)
    return scale


def _export_depth(dataset_dir: Path, scene: Path, diameter_mm: float, marker: Path):
    """depth/ images (:func:`_write_depth`) added to a set exported before they were written."""
    from render.dataset import read_samples

    (scene / "depth").mkdir(parents=True, exist_ok=True)
    cams = json.loads((scene / "scene_camera.json").read_text())
    for k, s in enumerate(read_samples(dataset_dir)):
        cams[str(k)]["depth_scale"] = _write_depth(s, diameter_mm, scene / "depth" / f"{k:06d}.png")
    (scene / "scene_camera.json").write_text(json.dumps(cams))
    marker.write_text("ok")


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()} cores, {cpu}, no GPU, Python {platform.python_version()}"
