"""Domain-randomized synthetic training data from any mesh: sharded, seeded, resumable, parallel.

    python -m render.generate --mesh toy --out data/toy --num_images 20000 --randomization complete

Writes ``DIR/train-00000-of-000K.tfrecord`` shards (schema: render/records.py) and ``DIR/dataset.json``.
Sample ``i`` depends only on (flags, seed, i): the same flags give byte-identical shards whatever ``--workers`` or
``--shard_index`` split was used. A shard is written under a temporary name and renamed when complete, so a run that
was killed is simply started again (finished shards are kept). ``--num_shards K --shard_index I`` renders one shard
only: the unit of work for a cluster job array (docs/render.md).

Process layout: ``--workers`` render processes (spawned, each with its own EGL context) render and PNG-encode
samples and return serialized tf.train.Example bytes; the parent (which never creates a GL context) frames them
into TFRecord files (render/tfrecord.py, byte-identical to tf.io.TFRecordWriter). No process here imports
TensorFlow.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

import render  # noqa: F401  (PYOPENGL_PLATFORM=egl)

from absl import app, flags

from pose_core import PoseInputError
from render.modes import MODES, mode_axes
from render.randomize import list_backgrounds
from render.records import FORMAT_VERSION, shard_name

FLAGS = flags.FLAGS

flags.DEFINE_string("mesh", None, "Mesh file (PLY/OBJ/STL/GLB..., millimetres) or a built-in object: toy, box, "
                    "symmetric.")
flags.DEFINE_string("out", None, "Output folder (created).")
flags.DEFINE_integer("num_images", 1000, "Number of samples in the dataset.")
flags.DEFINE_integer("seed", 0, "Dataset seed; sample i's randomness derives from (seed, i).")
flags.DEFINE_string("randomization", "complete", f"Randomization mode: {', '.join(MODES)}.")
flags.DEFINE_integer("image_size", 128, "Square image size in pixels.")
flags.DEFINE_string("backgrounds", None, "Folder of real background photos (needed by mode real_background).")
flags.DEFINE_integer("exclude_obj_id", None, "Skip background photos showing this YCB-V obj_id "
                     "(objects_in_frame.json in --backgrounds).")
flags.DEFINE_string("texture_photos", None, "Folder of photos (e.g. ../shared/data/ycbv_backgrounds) that random "
                    "object appearances cut textures from: real print on untextured models (--exclude_obj_id "
                    "applies).")
flags.DEFINE_float("photo_background_prob", 0.0, "In modes with random backgrounds (complete, fixed_light, "
                   "fixed_object): the share of backgrounds cut from the --backgrounds photos instead of procedural "
                   "images (0: none, the default).")
flags.DEFINE_float("own_appearance_prob", 0.0, "In modes with a random object appearance (complete, fixed_light, "
                   "real_background): the share of samples that show the mesh's own colours / texture (0: none, the "
                   "default).")
flags.DEFINE_integer("workers", 2, "Render processes (each with its own GL context).")
flags.DEFINE_integer("num_shards", None, "Number of shards (default: one per 2000 images).")
flags.DEFINE_integer("shard_index", None, "Render only this shard (0-based); default: all shards.")
flags.DEFINE_float("mesh_scale", 1.0, "Multiplies the mesh coordinates (1000 for a mesh in metres).")
flags.DEFINE_integer("obj_id", None, "Object id stored with each sample (default: the built-in's id, the number in "
                     "an obj_NNNNNN file name, else 1).")
flags.DEFINE_integer("num_model_points", 1024, "Model points stored in dataset.json.")
flags.DEFINE_float("focal_px", None, "Focal length in pixels (default: equal to --image_size).")
flags.DEFINE_string("object_size_frac_range", "0.35,0.9", "Projected object diameter / image size: lo,hi.")
flags.DEFINE_string("elevation_range_deg", None, "Camera elevation range lo,hi in degrees above the model's xy "
                    "plane (azimuth and in-plane roll uniform); default: rotations uniform on SO(3).")
flags.DEFINE_float("out_of_frame_prob", 0.1, "Probability that the object centre may lie anywhere in the image "
                   "(objects partly out of frame).")
flags.DEFINE_boolean("distractors", False, "Add 1-3 random distractor objects / occluders.")
flags.DEFINE_boolean("symmetric", None, "Mark the object symmetric (default: from the built-in table or "
                     "models_info.json beside the mesh).")
flags.DEFINE_boolean("msaa", False, "4x multisample anti-aliasing (about 4x slower on a CPU renderer).")
flags.DEFINE_integer("png_compress_level", 1, "PNG compression level 0-9 (1: fast).")
flags.DEFINE_integer("chunk_size", 8, "Samples per task sent to a worker.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")

# Flags that change how a run executes but not the data: not part of the resume check.
EXECUTION_FLAGS = ("workers", "shard_index", "progress", "chunk_size")
DATA_FLAGS = ("mesh", "num_images", "seed", "randomization", "image_size", "backgrounds", "exclude_obj_id",
              "num_shards", "mesh_scale", "obj_id", "num_model_points", "focal_px", "object_size_frac_range",
              "elevation_range_deg", "out_of_frame_prob", "distractors", "symmetric", "msaa", "png_compress_level",
              "texture_photos", "photo_background_prob", "own_appearance_prob")
# Data flags recorded in dataset.json only when set: datasets written before they existed stay valid to resume.
FLAGS_RECORDED_WHEN_SET = ("photo_background_prob", "own_appearance_prob")
DATASET_JSON = "dataset.json"


class GenerateError(PoseInputError):
    """Bad flags or input for the generator; the message says what to change."""


# ---------------------------------------------------------------------------------------------------- planning
def _parse_range(text, name):
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise GenerateError(f"--{name} must be two numbers 'lo,hi', got {text!r}") from None
    if not lo <= hi:
        raise GenerateError(f"--{name}: lo must be <= hi, got {text!r}")
    return lo, hi


def resolve_mesh(mesh_flag: str):
    """``(path, builtin spec or None)`` of the --mesh flag."""
    from pose_core.objects import BUILTIN_OBJECTS, builtin_model_path

    if mesh_flag in BUILTIN_OBJECTS:
        return str(builtin_model_path(mesh_flag)), BUILTIN_OBJECTS[mesh_flag]
    return str(mesh_flag), None


def shard_counts(num_images: int, num_shards: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` global index range of each shard."""
    return [(k * num_images // num_shards, (k + 1) * num_images // num_shards) for k in range(num_shards)]


def plan(opts: dict) -> dict:
    """Validates the options and returns the dataset description (what dataset.json holds) plus internals."""
    import numpy as np

    from pose_core.bop import is_symmetric, load_models_info
    from pose_core.geometry import sample_model_points
    from pose_core.mesh import load_mesh, mesh_diameter

    if opts["mesh"] is None:
        raise GenerateError("--mesh is required (a mesh file or one of toy, box, symmetric)")
    if opts["out"] is None:
        raise GenerateError("--out is required")
    mode_axes(opts["randomization"])
    if opts["num_images"] is None or opts["num_images"] <= 0:
        raise GenerateError(f"--num_images must be > 0, got {opts['num_images']}")
    if opts["image_size"] < 16 or opts["image_size"] > 4096:
        raise GenerateError(f"--image_size must be in [16, 4096], got {opts['image_size']}")
    if opts["workers"] < 1:
        raise GenerateError(f"--workers must be >= 1, got {opts['workers']}")
    num_shards = opts["num_shards"] or max(1, math.ceil(opts["num_images"] / 2000))
    if num_shards < 1 or num_shards > opts["num_images"]:
        raise GenerateError(f"--num_shards must be in [1, num_images={opts['num_images']}], got {num_shards}")
    if opts["shard_index"] is not None and not 0 <= opts["shard_index"] < num_shards:
        raise GenerateError(f"--shard_index must be in [0, {num_shards - 1}], got {opts['shard_index']}")
    if not 0 <= opts["png_compress_level"] <= 9:
        raise GenerateError(f"--png_compress_level must be in 0..9, got {opts['png_compress_level']}")
    size_range = _parse_range(opts["object_size_frac_range"], "object_size_frac_range")
    if not 0.0 < size_range[0] <= size_range[1] <= 3.0:
        raise GenerateError(f"--object_size_frac_range must lie in (0, 3], got {opts['object_size_frac_range']}")
    elevation = _parse_range(opts["elevation_range_deg"], "elevation_range_deg")
    if elevation is not None and not -90 <= elevation[0] <= elevation[1] <= 90:
        raise GenerateError(f"--elevation_range_deg must lie in [-90, 90], got {opts['elevation_range_deg']}")
    if opts["focal_px"] is not None and not opts["focal_px"] > 0:
        raise GenerateError(f"--focal_px must be > 0, got {opts['focal_px']}")

    axes = mode_axes(opts["randomization"])
    for name, axis in (("photo_background_prob", "background"), ("own_appearance_prob", "object")):
        value = opts[name]
        if not 0.0 <= value <= 1.0:
            raise GenerateError(f"--{name} must lie in [0, 1], got {value}")
        if value > 0 and axes[axis] != "random":
            raise GenerateError(f"--{name} mixes into a random {axis}; mode {opts['randomization']} has the "
                                f"{axis} {axes[axis]!r}")
    backgrounds = []
    if axes["background"] == "real" or opts["photo_background_prob"] > 0:
        if not opts["backgrounds"]:
            needs = ("--randomization=real_background" if axes["background"] == "real"
                     else "--photo_background_prob")
            raise GenerateError(f"{needs} needs --backgrounds (a folder of photos)")
        backgrounds = list_backgrounds(opts["backgrounds"], opts["exclude_obj_id"])
    elif opts["backgrounds"]:
        list_backgrounds(opts["backgrounds"], opts["exclude_obj_id"])  # still validate the folder
    texture_files = (list_backgrounds(opts["texture_photos"], opts["exclude_obj_id"], "--texture_photos")
                     if opts["texture_photos"] else [])

    mesh_path, builtin = resolve_mesh(opts["mesh"])
    mesh = load_mesh(mesh_path, opts["mesh_scale"])
    obj_id = opts["obj_id"]
    if obj_id is None:
        m = re.search(r"obj_(\d+)", Path(mesh_path).stem)
        obj_id = builtin.obj_id if builtin else (int(m.group(1)) if m else 1)
    symmetric = opts["symmetric"]
    if symmetric is None:
        symmetric = bool(builtin.symmetric) if builtin else False
        info_path = Path(mesh_path).parent / "models_info.json"
        if builtin is None and info_path.is_file():
            info = load_models_info(info_path)
            if obj_id in info:
                symmetric = is_symmetric(info[obj_id])
    if opts["num_model_points"] <= 0:
        raise GenerateError(f"--num_model_points must be > 0, got {opts['num_model_points']}")
    points = sample_model_points(mesh, opts["num_model_points"], seed=0)
    sha = hashlib.sha256(Path(mesh_path).read_bytes()).hexdigest()
    ranges = _ranges(opts, size_range, elevation)
    counts = shard_counts(opts["num_images"], num_shards)
    data_flags = {k: opts[k] for k in DATA_FLAGS if k not in FLAGS_RECORDED_WHEN_SET or opts[k]}
    data_flags["num_shards"] = num_shards
    info = {
        "format_version": FORMAT_VERSION,
        "mesh": mesh_path,
        "mesh_sha256": sha,
        "obj_id": int(obj_id),
        "diameter_mm": mesh_diameter(mesh),
        "symmetric": bool(symmetric),
        "model_points_mm": np.round(points, 6).tolist(),
        "image_size": opts["image_size"],
        "randomization": opts["randomization"],
        "randomized_axes": axes,
        "flags": data_flags,
        "seed": opts["seed"],
        "num_images": opts["num_images"],
        "num_shards": num_shards,
        "shards": [{"file": shard_name(k, num_shards), "count": b - a, "first_index": a}
                   for k, (a, b) in enumerate(counts)],
        "background_files": [Path(p).name for p in backgrounds],
    }
    if texture_files:  # (only when used: older dataset.json files stay as they were)
        info["texture_photo_files"] = [Path(p).name for p in texture_files]
    from render.engine import RenderConfig

    config = RenderConfig(mesh_path=mesh_path, obj_id=int(obj_id), image_size=opts["image_size"],
                          focal_px=opts["focal_px"], seed=opts["seed"], mode=opts["randomization"],
                          mesh_scale=opts["mesh_scale"], background_files=backgrounds, texture_files=texture_files,
                          distractors=opts["distractors"], png_compress_level=opts["png_compress_level"],
                          msaa=opts["msaa"], ranges=ranges)
    return {"info": info, "config": config, "counts": counts}


def _ranges(opts, size_range, elevation):
    from render.randomize import Ranges

    r = Ranges()
    r.object_size_frac = size_range
    r.elevation_deg = elevation
    r.out_of_frame_prob = float(opts["out_of_frame_prob"])
    r.photo_background_prob = float(opts["photo_background_prob"])
    r.own_appearance_prob = float(opts["own_appearance_prob"])
    return r


# ---------------------------------------------------------------------------------------------------- workers
_WORKER = {}


def _init_worker(config):
    try:
        from render.engine import SampleRenderer

        renderer = SampleRenderer(config)
        _WORKER["renderer"] = renderer
        atexit.register(renderer.close)
    except BaseException as e:  # reported by the first task (a failing initializer would respawn forever)
        _WORKER["error"] = e


# Test hook (tests/test_render_generate.py): "fail:I" raises, "sleep:I" stalls, when a worker reaches sample I.
TEST_HOOK_ENV = "SYNTHPOSE_RENDER_TEST_HOOK"


def _test_hook(index):
    hook = os.environ.get(TEST_HOOK_ENV)
    if not hook:
        return
    action, _, at = hook.partition(":")
    if int(at) == index:
        if action == "fail":
            raise RuntimeError(f"injected failure at sample {index} ({TEST_HOOK_ENV})")
        if action == "sleep":
            import time

            time.sleep(600)


def _render_chunk(task):
    if "error" in _WORKER:
        raise _WORKER["error"]
    import time

    c0 = time.process_time()  # CPU of this process incl. the GL rasterizer threads (render.bench reports it)
    start, stop = task
    r = _WORKER["renderer"]
    out = []
    for i in range(start, stop):
        _test_hook(i)
        out.append(r.encode_index(i))
    return out, time.process_time() - c0


# ---------------------------------------------------------------------------------------------------- driver
# Timings of the last generate() call in this process (render.bench reads them): startup_s (until the first
# samples arrived), steady_images_per_s (after that), images, wall_s.
LAST_RUN_STATS: dict = {}

def _check_writable(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GenerateError(f"output folder {str(out)!r} is not writable: {e.strerror or e}") from None


def _write_or_check_info(out: Path, info: dict):
    path = out / DATASET_JSON
    text = json.dumps(info, indent=1, sort_keys=True)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GenerateError(f"{path} is not valid JSON ({e}): cannot tell which flags made the shards there. "
                                f"Use another --out folder, or delete the folder.") from None
        if old is not None:
            keys = ("format_version", "flags", "mesh_sha256")
            diff = []
            for key in keys:
                a, b = old.get(key), info.get(key)
                if key == "flags" and isinstance(a, dict):
                    diff += [f"--{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
                             if a.get(k) != b.get(k)]
                elif a != b:
                    diff.append(f"{key}: {a!r} there, {b!r} now")
            if diff:
                raise GenerateError(
                    f"{path} describes a dataset made with different settings ({'; '.join(diff)}): refusing to "
                    f"resume into it. Use another --out folder, or the original flags.")
            return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate(opts: dict) -> dict:
    """Renders the dataset described by ``opts`` (the flag values by name); returns dataset.json's content."""
    import time

    t_start = time.perf_counter()
    LAST_RUN_STATS.clear()
    p = plan(opts)
    info, config, counts = p["info"], p["config"], p["counts"]
    out = Path(opts["out"])
    _check_writable(out)
    _write_or_check_info(out, info)
    shard_ids = range(info["num_shards"]) if opts["shard_index"] is None else [opts["shard_index"]]
    todo = [k for k in shard_ids if not (out / info["shards"][k]["file"]).is_file()]
    total = sum(counts[k][1] - counts[k][0] for k in todo)
    if not todo:
        print(f"render.generate: all {len(list(shard_ids))} shard(s) already complete in {out}", file=sys.stderr)
        return info
    chunk = max(1, opts["chunk_size"])
    tasks, task_shard = [], []
    for k in todo:
        a, b = counts[k]
        for s in range(a, b, chunk):
            tasks.append((s, min(s + chunk, b)))
            task_shard.append(k)

    import multiprocessing as mp

    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # fresh interpreters: nothing inherited from a caller that imported TF or GL
    workers = min(opts["workers"], len(tasks))
    pending = {}  # shard -> (writer, tmp path, records written)
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(config,))
    bar = None
    try:
        from render.tfrecord import TFRecordWriter

        bar = tqdm(total=total, unit="img", disable=not opts["progress"], desc=f"render {out.name}",
                   dynamic_ncols=True, smoothing=0.1)
        t_first, n_first, n_done, worker_cpu, c_first = None, 0, 0, 0.0, 0.0
        for k, (records, cpu) in zip(task_shard, pool.imap(_render_chunk, tasks)):
            n_done += len(records)
            worker_cpu += cpu
            if t_first is None:
                t_first, n_first, c_first = time.perf_counter(), len(records), time.process_time()
            if k not in pending:
                final = out / info["shards"][k]["file"]
                tmp = final.with_name(final.name + ".tmp")
                pending[k] = [TFRecordWriter(tmp), tmp, 0]
            entry = pending[k]
            for rec in records:
                entry[0].write(rec)
            entry[2] += len(records)
            bar.update(len(records))
            if entry[2] == counts[k][1] - counts[k][0]:
                entry[0].close()
                os.replace(entry[1], out / info["shards"][k]["file"])
                del pending[k]
        t_end, c_end = time.perf_counter(), time.process_time()
        pool.close()
        pool.join()
        LAST_RUN_STATS.update(
            images=n_done, wall_s=time.perf_counter() - t_start, startup_s=t_first - t_start,
            steady_images_per_s=(n_done - n_first) / max(t_end - t_first, 1e-9), workers=workers,
            worker_cpu_ms_per_image=1000 * worker_cpu / n_done,
            writer_cpu_ms_per_image=1000 * (c_end - c_first) / max(n_done - n_first, 1))
    except BaseException:
        pool.terminate()
        pool.join()
        for writer, tmp, _ in pending.values():  # no half-written shard left behind
            try:
                writer.close()
            finally:
                Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return info


def _opts_from_flags() -> dict:
    return {name: FLAGS[name].value for name in DATA_FLAGS + EXECUTION_FLAGS + ("out",)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        info = generate(_opts_from_flags())
    except PoseInputError as e:
        print(f"render.generate: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a worker failed: the message, not a pool traceback; unfinished shards were removed
        print(f"render.generate: error: rendering failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    done = [s for s in info["shards"] if (Path(FLAGS.out) / s["file"]).is_file()]
    print(f"render.generate: {len(done)}/{info['num_shards']} shard(s) complete in {FLAGS.out}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
