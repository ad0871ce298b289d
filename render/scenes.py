"""Whole photos of several objects: domain-randomized scenes written as a BOP folder.

    python -m render.scenes --models_dir DIR --out BOP_ROOT [--obj_ids 1,5,6|all] [--num_images 100]
        [--camera CAMERA.json] [--objects_per_image 2,5] [--randomization complete] [--backgrounds DIR]
        [--exclude_obj_ids 10] [--distractors_dir MODELS] [--object_size_frac 0.15,0.5] [--seed 0]
        [--poses uniform|resting] [--occluder_share 0.5] [--part_material_share 0.5] [--split test] [--scene_id 0]

Each image shows 2-5 (``--objects_per_image``) different objects of a BOP models folder at the test camera's
intrinsics and image size (``--camera``: a JSON with ``cam_K`` and ``width``/``height``, or a BOP
``scene_camera.json``, whose first camera is used; default :data:`DEFAULT_CAMERA`, LINEMOD's 640x480 camera), at
distances where each object's diameter spans :attr:`SceneRanges.object_size_frac` of the shorter image side, posed
uniformly on SO(3) (or resting on a table: ``--poses resting``), with the randomization of ``--randomization``
(render/modes.py: background, object appearance, lights, noise; each object gets its own appearance).
``--distractors_dir``: 0-3 objects of another BOP models folder per image, rendered like the others but not
annotated (the other things a photo holds, for detectors); ``--occluder_share``: the chance that one of them stands
in front of an object and hides part of it. ``--part_material_share``: the chance that each end of an object with a
random appearance (:func:`model_parts`: a lid, a base, a box's side) wears a random material of its own.

Written (BOP layout, the same as real test sets, so ``pose_net.evaluate`` and detectors read both):

* ``<split>/<scene_id>/rgb/NNNNNN.png``, ``depth/NNNNNN.png`` (16-bit, mm = value * depth_scale; the objects'
  depth, 0 where no object is), ``mask_visib/NNNNNN_KKKKKK.png`` (the visible pixels of instance K);
* ``scene_gt.json`` (poses), ``scene_camera.json`` (``cam_K``, ``depth_scale``), ``scene_gt_info.json``
  (``bbox_obj``: the unoccluded silhouette's box, ``bbox_visib``, ``px_count_all``, ``px_count_visib``,
  ``visib_fract``);
* ``models/``: the chosen objects' model files and their ``models_info.json`` entries.

Resumable: the JSON files are rewritten every :data:`FLUSH_EVERY` images and a run starts after the last image they
list; every image depends on ``(seed, image index)`` only, so a resumed folder equals an uninterrupted one, and
asking a finished folder for more images extends it. A folder asked for other objects, camera, mode or seed is
refused, not overwritten.

No TensorFlow here.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import render  # noqa: F401  (sets PYOPENGL_PLATFORM=egl before pyrender is imported)

import numpy as np
from absl import app, flags

from pose_core import PoseInputError, bop, write_json_atomic
from pose_core.geometry import axis_angle_to_matrix, bbox_from_mask, pose_matrix, random_rotations
from pose_core.mesh import load_mesh, mesh_diameter
from render import randomize as rz
from render.engine import (MM, LightRig, _is_textured, add_opencv_camera, can_cull_back_faces, material,
                           offscreen_renderer, random_material_primitive)
from render.modes import mode_axes
from render.records import depth_scale_for

# LINEMOD's camera (BOP lm / lmo): the models of ../shared/data/lmo_models were photographed with it.
DEFAULT_CAMERA = {"cam_K": [572.4114, 0.0, 325.2611, 0.0, 573.57043, 242.04899, 0.0, 0.0, 1.0],
                  "width": 640, "height": 480}
FLUSH_EVERY = 10  # images between rewrites of the scene's JSON files (what a killed run loses at most)
SCENE_INFO = "scenes.json"  # what the folder was made with (the refusal of a different run)
# The random streams of a scene image (render/randomize.py's STREAM_* numbers stay those of single-object data).
STREAM_LAYOUT, STREAM_BACKGROUND, STREAM_LIGHT, STREAM_NOISE, STREAM_APPEARANCE, STREAM_DISTRACTORS = range(100, 106)
STREAM_PARTS = 106  # the parts' own materials (SceneRanges.part_material_share)


class SceneError(PoseInputError):
    """Bad input to the scene renderer (models folder, object ids, camera, a folder made otherwise)."""


@dataclass
class SceneRanges:
    """The scene layout's ranges (docs/render.md); appearance, lights and noise use :class:`rz.Ranges`."""
    object_size_frac: tuple = (0.15, 0.5)  # projected diameter / shorter image side (72-240 px at 640x480)
    margin_frac: float = 0.1  # object centres at least this share of the image size from the border
    objects_per_image: tuple = (2, 5)  # inclusive
    distractors_per_image: tuple = (0, 3)  # inclusive, when distractor models are given
    occluder_share: float = 0.0  # the chance that a distractor stands in front of an object (_place_in_front)
    part_material_share: float = 0.0  # the chance that each end part of an object wears its own material
    poses: str = "uniform"  # one of POSE_MODES
    camera_elevation_deg: tuple = (10.0, 70.0)  # "resting": the camera's angle above the table plane
    camera_roll_deg: float = 10.0  # "resting": the camera turned about its axis by at most this, either way


# The end parts of a model (model_parts): the faces whose centre lies in the outer PART_END_SHARE of the model's extent
# along one of its axes, at either end. Real objects are seldom one material: a can's metal lid and base around its
# label, a box's lighter top above its printed front. A detector trained on objects of one random material each
# learns that an object ends where its material does; on the real can its boxes stop short of the unprinted base
# (14% short, docs/results.md).
PART_END_SHARE = 0.15
PART_AXES = (2, 0, 1)  # the order a face in two ends is given to one: z first (BOP's symmetry axis: a can's lid)


def model_parts(vertices_mm: np.ndarray, faces: np.ndarray) -> list[np.ndarray]:
    """The faces of a model split into parts: ``[core, end, end, ...]``, each an array of face indices (empty
    parts left out, the core first, possibly empty too). An end holds the faces whose centre is within
    :data:`PART_END_SHARE` of the model's extent from its bounding box's low or high side along an axis
    (:data:`PART_AXES` in order; a face is in the first end it falls in); the core is the rest. A model's faces
    lie on its surface, so most fall in some end: a cylinder along z gives its lid and base (caps and the side's
    outer bands) and four sides, a box its six faces, and the core is empty or small."""
    v = np.asarray(vertices_mm, np.float64)
    f = np.asarray(faces, np.int64)
    centre = v[f].mean(axis=1)
    lo, hi = v.min(axis=0), v.max(axis=0)
    frac = (centre - lo) / np.maximum(hi - lo, 1e-9)
    label = np.zeros(len(f), np.int64)  # 0: core
    k = 0
    for axis in PART_AXES:
        for end in (frac[:, axis] < PART_END_SHARE, frac[:, axis] > 1.0 - PART_END_SHARE):
            k += 1
            label[(label == 0) & end] = k
    return [np.flatnonzero(label == 0)] + [idx for j in range(1, k + 1) if len(idx := np.flatnonzero(label == j))]


# How objects are rotated: "uniform" on SO(3) (every view equally likely), or "resting" on a table (one face of the
# model's bounding box down, any turn about the table's normal, the table seen from camera_elevation_deg above):
# the views of a tabletop photo, where a box stands and shows its large faces.
POSE_MODES = ("uniform", "resting")


def resting_rotation(rng, elevation_deg: tuple, roll_deg: float) -> np.ndarray:
    """A model-to-camera rotation ``[3, 3]`` of an object resting on a table: one of the six faces of its
    axis-aligned bounding box down (``-a`` for a model axis ``a``, chosen uniformly), turned uniformly about the
    table's normal; the table's up direction is ``(0, -cos e, -sin e)`` in the (OpenCV) camera for an elevation
    ``e`` drawn in ``elevation_deg``, then the camera is rolled about its optical axis by at most ``roll_deg``."""
    i, sign = int(rng.integers(3)), float(rng.choice([-1.0, 1.0]))
    down_axis = np.zeros(3)
    down_axis[i] = sign
    r3 = -down_axis  # the face's outward normal -> world -z: the third row of R_face is -down_axis
    r1 = np.roll(np.eye(3)[i], 1)  # a model axis orthogonal to it
    face = np.stack([r1, np.cross(r3, r1), r3])  # rows: right-handed, face @ down_axis = (0, 0, -1)
    turn = axis_angle_to_matrix([0.0, 0.0, 1.0], rng.uniform(0.0, 2.0 * np.pi))  # about the table's normal
    e = np.deg2rad(rng.uniform(*elevation_deg))
    up = np.array([0.0, -np.cos(e), -np.sin(e)])
    x = np.array([1.0, 0.0, 0.0])
    world_to_camera = np.stack([x, np.cross(up, x), up], axis=1)  # columns: the world axes in the camera
    rolled = axis_angle_to_matrix([0.0, 0.0, 1.0], np.deg2rad(rng.uniform(-roll_deg, roll_deg)))  # optical axis
    return rolled @ world_to_camera @ turn @ face


@dataclass
class SceneModel:
    """One object of the scene: its id, mesh in mm, diameter, model file."""
    obj_id: int
    mesh: object
    diameter_mm: float
    path: Path

    @property
    def box_centre_mm(self) -> np.ndarray:
        """The centre of the model's axis-aligned bounding box, in model coordinates (mm): what a placement puts
        at its chosen image position."""
        return (self.mesh.bounds[0] + self.mesh.bounds[1]) / 2.0


def load_camera(path: str | None) -> tuple[np.ndarray, int, int]:
    """``(K [3, 3], width, height)`` from ``--camera``: a JSON with ``cam_K`` (row-major 9) and ``width``,
    ``height``; or a BOP ``scene_camera.json`` (its first camera, with ``width``/``height`` beside ``cam_K`` or
    else 640x480); ``None``: :data:`DEFAULT_CAMERA`."""
    if path is None:
        cam = DEFAULT_CAMERA
    else:
        try:
            cam = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SceneError(f"--camera {path}: cannot read it as JSON ({e})") from None
        if isinstance(cam, dict) and "cam_K" not in cam and cam:  # scene_camera.json: {"0": {"cam_K": ...}, ...}
            cam = cam[sorted(cam, key=lambda k: int(k) if str(k).isdigit() else 0)[0]]
        if not isinstance(cam, dict) or "cam_K" not in cam:
            raise SceneError(f"--camera {path}: no 'cam_K' (expected {{\"cam_K\": [9 numbers], \"width\": W, "
                             f"\"height\": H}} or a BOP scene_camera.json)")
    K = np.asarray(cam["cam_K"], np.float64)
    if K.size != 9 or not np.all(np.isfinite(K)) or K[0] <= 0 or K[4] <= 0:
        raise SceneError(f"--camera {path}: cam_K must be 9 finite numbers with positive focal lengths, got "
                         f"{cam['cam_K']}")
    width, height = int(cam.get("width", 640)), int(cam.get("height", 480))
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise SceneError(f"--camera {path}: image size {width}x{height} is out of range (16..4096)")
    return K.reshape(3, 3), width, height


def load_models(models_dir, obj_ids: list[int] | None) -> list[SceneModel]:
    """The objects of a BOP models folder (``models_info.json`` and ``obj_NNNNNN.*``); ``obj_ids`` None: all.
    Raises :class:`SceneError` naming the file for a missing models_info.json, an unknown id or a broken mesh."""
    models_dir = Path(models_dir)
    info_path = models_dir / "models_info.json"
    if not info_path.is_file():
        raise SceneError(f"{info_path}: no models_info.json in the models folder (a BOP models folder has one, with "
                         f"each object's diameter)")
    info = bop.load_models_info(info_path)
    ids = sorted(info) if obj_ids is None else list(obj_ids)
    unknown = [i for i in ids if i not in info]
    if unknown:
        raise SceneError(f"{info_path}: no object {', '.join(map(str, unknown))} (it lists "
                         f"{', '.join(map(str, sorted(info)))})")
    if len(set(ids)) != len(ids) or not ids:
        raise SceneError(f"--obj_ids must name distinct objects, got {ids}")
    out = []
    for i in ids:
        path = bop.find_model_file(models_dir, i)
        mesh = load_mesh(str(path))  # refuses a mesh in metres, naming the file
        out.append(SceneModel(i, mesh, float(info[i].get("diameter", mesh_diameter(mesh))), path))
    return out


class SceneSampler:
    """All random choices of scene image ``index`` (pure numpy; deterministic in (seed, index))."""

    def __init__(self, models: list[SceneModel], K, width: int, height: int, mode: str, seed: int,
                 ranges: SceneRanges = SceneRanges(), look: rz.Ranges = rz.Ranges(), photos: list = (),
                 distractors: list[SceneModel] = (), texture_photos: list = ()):
        """``distractors``: models shown but not annotated (other objects a photo may hold); the renderer's models
        are ``models + distractors``, and an instance's ``model`` indexes that list. ``texture_photos``: photos
        that random appearances cut textures from (:func:`render.randomize.object_appearance`)."""
        self.models, self.K, self.width, self.height = models, np.asarray(K, np.float64), width, height
        self.distractors = list(distractors)
        self.axes, self.seed, self.ranges, self.look, self.photos = mode_axes(mode), seed, ranges, look, list(photos)
        self.texture_photos = list(texture_photos)
        # per model (objects, then distractors): its parts' faces, when parts may wear their own materials
        self.parts = ([model_parts(m.mesh.vertices, m.mesh.faces) for m in self.models + self.distractors]
                      if ranges.part_material_share > 0 else [])
        if self.axes["background"] == "real" and not self.photos:
            raise SceneError("randomization real_background needs background photos (--backgrounds)")

    def params(self, index: int) -> dict:
        rng = rz.sample_rng(self.seed, index, STREAM_LAYOUT)
        lo, hi = self.ranges.objects_per_image
        n = min(int(rng.integers(lo, hi + 1)), len(self.models))
        chosen = rng.choice(len(self.models), size=n, replace=False)
        instances = [self._place(rng, int(k), self.models[int(k)]) for k in chosen]
        distractors = []
        if self.distractors:  # their own random stream: scenes without distractors stay as they were
            rng_d = rz.sample_rng(self.seed, index, STREAM_DISTRACTORS)
            lo, hi = self.ranges.distractors_per_image
            n = min(int(rng_d.integers(lo, hi + 1)), len(self.distractors))
            for k in rng_d.choice(len(self.distractors), size=n, replace=False):
                model_index, m = len(self.models) + int(k), self.distractors[int(k)]
                # (drawn only when asked: scenes without occluders stay as they were)
                if self.ranges.occluder_share > 0 and rng_d.uniform() < self.ranges.occluder_share:
                    target = instances[int(rng_d.integers(len(instances)))]
                    placed = self._place_in_front(rng_d, model_index, m, target)
                else:
                    placed = self._place(rng_d, model_index, m)
                distractors.append(dict(placed, obj_id=None))
        rng_bg = rz.sample_rng(self.seed, index, STREAM_BACKGROUND)
        big = max(self.width, self.height)
        if self.axes["background"] == "random":
            background = rz.procedural_image(rng_bg, big)
        elif self.axes["background"] == "real":
            background = rz.real_background(rng_bg, self.photos, big)[0]
        else:
            background = np.full((big, big, 3), rz.PLAIN_BACKGROUND_RGB, np.uint8)
        rng_app = rz.sample_rng(self.seed, index, STREAM_APPEARANCE)
        for inst in instances + distractors:  # the distractors' after the objects': those stay as they were
            inst["appearance"] = (rz.object_appearance(rng_app, self.look, texture_photos=self.texture_photos)
                                  if self.axes["object"] == "random" else "own")
        if self.parts:  # their own stream, drawn only when asked: scenes without parts stay as they were
            rng_parts = rz.sample_rng(self.seed, index, STREAM_PARTS)
            share = self.ranges.part_material_share
            for inst in instances + distractors:
                if inst["appearance"] != "own":  # per end part (not the core): its own material, or None
                    inst["part_appearances"] = [
                        rz.object_appearance(rng_parts, self.look, texture_photos=self.texture_photos)
                        if rng_parts.uniform() < share else None for _ in self.parts[inst["model"]][1:]]
        centre_m = np.mean([i["t_mm"] for i in instances], axis=0) * MM
        light = (rz.sample_lights(rz.sample_rng(self.seed, index, STREAM_LIGHT), centre_m, self.look)
                 if self.axes["light"] == "random" else rz.FIXED_LIGHT)
        return {"index": int(index), "instances": instances, "distractors": distractors,
                "background": background[:self.height, :self.width], "light": light,
                "noise": bool(self.axes["noise"])}

    def _place(self, rng, model_index: int, m: SceneModel) -> dict:
        """A pose of ``m`` at a random image position, at the distance where its diameter spans a random share of
        the shorter image side (:attr:`SceneRanges.object_size_frac`), rotated as :attr:`SceneRanges.poses` says."""
        size_px = rng.uniform(*self.ranges.object_size_frac) * min(self.width, self.height)
        z = self.K[0, 0] * m.diameter_mm / size_px  # the distance at which the diameter spans size_px
        margin = self.ranges.margin_frac
        u = rng.uniform(margin * self.width, (1 - margin) * self.width)
        v = rng.uniform(margin * self.height, (1 - margin) * self.height)
        centre_cam = z * np.linalg.solve(self.K, [u, v, 1.0])  # where the model's box centre goes
        return self._rotated_at(rng, model_index, m, centre_cam)

    def _rotated_at(self, rng, model_index: int, m: SceneModel, centre_cam) -> dict:
        """The instance of ``m`` whose bounding-box centre is at ``centre_cam`` (mm, camera frame), rotated as
        :attr:`SceneRanges.poses` says (the rotation drawn from ``rng`` last)."""
        if self.ranges.poses == "resting":
            R = resting_rotation(rng, self.ranges.camera_elevation_deg, self.ranges.camera_roll_deg)
        else:
            R = random_rotations(1, rng)[0]
        return {"model": model_index, "obj_id": m.obj_id, "R": R, "t_mm": centre_cam - R @ m.box_centre_mm}

    def _place_in_front(self, rng, model_index: int, m: SceneModel, target: dict) -> dict:
        """A pose of ``m`` that hides part of the instance ``target``: between it and the camera (at
        :data:`OCCLUDER_DEPTH_SHARE` of its distance), its centre projected at :data:`OCCLUDER_OFFSET` of the
        target's projected diameter from the target's centre, in a random direction."""
        tm = self.models[target["model"]]
        centre_t = target["R"] @ tm.box_centre_mm + target["t_mm"]
        uv_t = (self.K @ centre_t)[:2] / centre_t[2]
        size_t_px = self.K[0, 0] * tm.diameter_mm / centre_t[2]
        z = centre_t[2] * rng.uniform(*OCCLUDER_DEPTH_SHARE)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        u, v = uv_t + rng.uniform(*OCCLUDER_OFFSET) * size_t_px * np.array([np.cos(angle), np.sin(angle)])
        return self._rotated_at(rng, model_index, m, z * np.linalg.solve(self.K, [u, v, 1.0]))


# Occluders (SceneRanges.occluder_share): a distractor put in front of an object stands at this share of the object's
# distance from the camera, its centre this share of the object's projected diameter from the object's centre: it
# hides a side or a corner, rarely the whole object (a real tabletop's objects hide each other so: the cracker box
# behind the coffee can in YCB-Video's scene 0001)
OCCLUDER_DEPTH_SHARE = (0.5, 0.85)
OCCLUDER_OFFSET = (0.25, 0.6)


class SceneRenderer:
    """Renders scene images of several objects with one offscreen context (create once; :meth:`close` at the end).

    Every object is uploaded twice (its own appearance, and its geometry with generated texture coordinates for
    random materials); per image only poses, materials, visibility and lights change."""

    def __init__(self, sampler: SceneSampler):
        import pyrender

        self.sampler = sampler
        self.scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.3, 0.3, 0.3])
        self.nodes = []  # per model: (own node, random node, random primitives: the whole, or one per part)
        cull_all = True
        for k, m in enumerate(sampler.models + sampler.distractors):
            mesh = m.mesh.copy()
            mesh.apply_scale(MM)
            own = self.scene.add(pyrender.Mesh.from_trimesh(mesh, smooth=not _is_textured(mesh)))
            prims = ([random_material_primitive(mesh, faces) if len(faces) else None for faces in sampler.parts[k]]
                     if sampler.parts else [random_material_primitive(mesh)])  # (None: an empty core)
            rand = self.scene.add(pyrender.Mesh([prim for prim in prims if prim is not None]))
            own.mesh.is_visible = rand.mesh.is_visible = False
            self.nodes.append((own, rand, prims))
            cull_all &= can_cull_back_faces(mesh)
        self.lights = LightRig(self.scene)
        add_opencv_camera(self.scene, sampler.K)
        self.renderer = offscreen_renderer(sampler.width, sampler.height)
        extra = 0 if cull_all else pyrender.RenderFlags.SKIP_CULL_FACES
        self._flags_color = pyrender.RenderFlags.RGBA | extra
        self._flags_depth = pyrender.RenderFlags.DEPTH_ONLY | extra

    def _show(self, inst: dict | None, shown: bool):
        own, rand, _ = self.nodes[inst["model"]]
        use_own = inst["appearance"] == "own"
        own.mesh.is_visible = shown and use_own
        rand.mesh.is_visible = shown and not use_own

    def render(self, p: dict) -> dict:
        """``p`` from :meth:`SceneSampler.params` -> ``image [H, W, 3]`` uint8, ``depth_mm [H, W]`` (0 where no
        object), and per instance ``full [H, W]`` and ``visible [H, W]`` bool masks."""
        for own, rand, _ in self.nodes:
            own.mesh.is_visible = rand.mesh.is_visible = False
        shown = p["instances"] + p.get("distractors", [])
        for inst in shown:
            own, rand, prims = self.nodes[inst["model"]]
            node = own if inst["appearance"] == "own" else rand
            if inst["appearance"] != "own":
                body = material(inst["appearance"])
                parts = inst.get("part_appearances") or []
                for prim, app in zip(prims, [None] + parts):  # the core (or the whole), then the ends
                    if prim is not None:
                        prim.material = body if app is None else material(app)
            self.scene.set_pose(node, pose_matrix(inst["R"], inst["t_mm"] * MM))
            self._show(inst, True)
        self.lights.set(p["light"])
        color, depth = self.renderer.render(self.scene, flags=self._flags_color)
        masks = []
        for inst in p["instances"]:  # each object alone: its full silhouette and depth, to find what is hidden
            for other in shown:
                self._show(other, other is inst)
            alone = self.renderer.render(self.scene, flags=self._flags_depth)
            full = alone > 0
            masks.append((full, full & (depth >= alone - 1e-4)))
        alpha = color[..., 3:4].astype(np.float32) * (1.0 / 255.0)
        img = color[..., :3].astype(np.float32) + p["background"].astype(np.float32) * (1.0 - alpha)
        if p["noise"]:
            img = rz.apply_noise(rz.sample_rng(self.sampler.seed, p["index"], STREAM_NOISE), img, self.sampler.look)
        else:
            img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return {"image": img, "depth_mm": depth.astype(np.float64) / MM, "masks": masks}

    def close(self):
        if getattr(self, "renderer", None) is not None:
            self.renderer.delete()
            self.renderer = None


def instance_info(full: np.ndarray, visible: np.ndarray) -> dict:
    """scene_gt_info.json's entry of one instance from its full and visible masks (BOP's definitions; an instance
    entirely out of the image has the box ``[-1, -1, -1, -1]`` and ``visib_fract`` 0)."""
    n_all, n_vis = int(full.sum()), int(visible.sum())
    none = [-1, -1, -1, -1]
    return {"bbox_obj": bbox_from_mask(full).astype(int).tolist() if n_all else none,
            "bbox_visib": bbox_from_mask(visible).astype(int).tolist() if n_vis else none,
            "px_count_all": n_all, "px_count_visib": n_vis, "px_count_valid": n_vis,
            "visib_fract": n_vis / n_all if n_all else 0.0}


def render_scenes(models_dir, out, obj_ids: list[int] | None = None, num_images: int = 100, camera=None,
                  mode: str = "complete", seed: int = 0, split: str = "test", scene_id: int = 0,
                  objects_per_image: tuple = SceneRanges.objects_per_image, backgrounds: str | None = None,
                  progress: bool = True, exclude_obj_ids=(), distractors_dir=None,
                  object_size_frac: tuple = SceneRanges.object_size_frac, texture_photos: str | None = None,
                  poses: str = SceneRanges.poses, occluder_share: float = SceneRanges.occluder_share,
                  part_material_share: float = SceneRanges.part_material_share) -> Path:
    """Renders (or finishes) a BOP folder of scene images; returns its root. See the module docstring.
    ``exclude_obj_ids``: background photos that show these objects (``objects_in_frame.json`` of
    ``backgrounds``) are left out, so a photo of the test object cannot leak into its training scenes.
    ``distractors_dir``: a BOP models folder whose objects (those not among the scene's own) appear, 0-3 per image
    (:attr:`SceneRanges.distractors_per_image`), unannotated: other things a photo holds. ``object_size_frac``:
    the range of an object's projected diameter over the shorter image side (the distances seen in practice).
    ``texture_photos``: a folder of photos (``exclude_obj_ids`` applies to it too) that random object appearances
    cut textures from (:func:`render.randomize.object_appearance`): real print on untextured models. ``poses``:
    one of :data:`POSE_MODES` (objects and distractors alike). ``occluder_share``: the chance that a distractor
    stands in front of an object and hides part of it (:meth:`SceneSampler._place_in_front`).
    ``part_material_share``: the chance that each end part of an object or distractor with a random appearance
    (:func:`model_parts`) wears a random material of its own."""
    from PIL import Image

    if num_images < 1:
        raise SceneError(f"--num_images must be >= 1, got {num_images}")
    lo, hi = objects_per_image
    if not 1 <= lo <= hi:
        raise SceneError(f"--objects_per_image must be 'MIN,MAX' with 1 <= MIN <= MAX, got {lo},{hi}")
    K, width, height = load_camera(camera)
    models = load_models(models_dir, obj_ids)
    out = Path(out)
    wanted = {"models_dir": str(Path(models_dir)), "obj_ids": [m.obj_id for m in models], "num_images": num_images,
              "cam_K": K.reshape(9).tolist(), "width": width, "height": height, "mode": mode, "seed": seed,
              "objects_per_image": [lo, hi], "split": split, "scene_id": scene_id}
    lo_s, hi_s = (float(v) for v in object_size_frac)
    if not 0 < lo_s <= hi_s <= 2:
        raise SceneError(f"--object_size_frac must be 'MIN,MAX' with 0 < MIN <= MAX <= 2, got {lo_s},{hi_s}")
    if (lo_s, hi_s) != SceneRanges.object_size_frac:  # (recorded only when not the default: older folders resume)
        wanted["object_size_frac"] = [lo_s, hi_s]
    if mode_axes(mode)["background"] == "real":  # (recorded only where photos are used: older folders resume)
        wanted["backgrounds_exclude_obj_ids"] = sorted(int(i) for i in exclude_obj_ids)
    distractors = []
    if distractors_dir:  # (recorded only when given, likewise)
        own = {m.path.resolve() for m in models}
        distractors = [d for d in load_models(distractors_dir, None) if d.path.resolve() not in own]
        if not distractors:
            raise SceneError(f"--distractors_dir {distractors_dir}: no object there that is not one of the scene's")
        wanted["distractors"] = [d.path.name for d in distractors]
    if poses not in POSE_MODES:
        raise SceneError(f"--poses must be one of {', '.join(POSE_MODES)}, got {poses!r}")
    if poses != SceneRanges.poses:  # (recorded only when not the default, likewise)
        wanted["poses"] = poses
    if not 0.0 <= occluder_share <= 1.0:
        raise SceneError(f"--occluder_share must be in [0, 1], got {occluder_share}")
    if occluder_share and not distractors_dir:
        raise SceneError("--occluder_share puts distractors in front of the objects: give --distractors_dir")
    if occluder_share:  # (recorded only when given, likewise)
        wanted["occluder_share"] = float(occluder_share)
    if not 0.0 <= part_material_share <= 1.0:
        raise SceneError(f"--part_material_share must be in [0, 1], got {part_material_share}")
    if part_material_share:  # (recorded only when given, likewise)
        wanted["part_material_share"] = float(part_material_share)
    if texture_photos:  # (recorded only when given, likewise)
        wanted["texture_photos_exclude_obj_ids"] = sorted(int(i) for i in exclude_obj_ids)
    info_path = out / SCENE_INFO
    if info_path.is_file():
        have = json.loads(info_path.read_text())
        # more images of the same scenes extend the folder (each image depends on its index only)
        differing = sorted(k for k in wanted if k not in ("models_dir", "num_images") and have.get(k) != wanted[k])
        if differing:
            raise SceneError(f"{out} holds scenes made with other settings ({', '.join(differing)}: "
                             f"{', '.join(f'{have.get(k)} now {wanted[k]}' for k in differing)}): choose another "
                             f"--out or remove that folder")
    def photo_list(folder, flag):
        return rz.photo_loaders(rz.list_backgrounds(folder, list(exclude_obj_ids), flag))

    photos = (photo_list(backgrounds, "--backgrounds") if mode_axes(mode)["background"] == "real" and backgrounds
              else [])
    sampler = SceneSampler(models, K, width, height, mode, seed,
                           SceneRanges(objects_per_image=(lo, hi), object_size_frac=(lo_s, hi_s), poses=poses,
                                       occluder_share=float(occluder_share),
                                       part_material_share=float(part_material_share)),
                           photos=photos,
                           distractors=distractors,
                           texture_photos=photo_list(texture_photos, "--texture_photos") if texture_photos else [])
    scene = out / split / f"{scene_id:06d}"
    for sub in ("rgb", "depth", "mask_visib"):
        (scene / sub).mkdir(parents=True, exist_ok=True)
    out.joinpath(SCENE_INFO).write_text(json.dumps(wanted, indent=1))
    _copy_models(models, Path(models_dir), out / "models")
    gt = _load_or_empty(scene / "scene_gt.json")
    cams = _load_or_empty(scene / "scene_camera.json")
    infos = _load_or_empty(scene / "scene_gt_info.json")
    start = min(len(gt), len(cams), len(infos))
    if start >= num_images:
        if progress:
            print(f"{out}: {num_images} scene images already rendered", flush=True)
        return out
    renderer = SceneRenderer(sampler)
    t0 = time.time()
    try:
        for i in range(start, num_images):
            p = sampler.params(i)
            r = renderer.render(p)
            Image.fromarray(r["image"]).save(scene / "rgb" / f"{i:06d}.png", compress_level=1)
            scale = float(depth_scale_for(r["depth_mm"].max()))
            Image.fromarray(np.rint(r["depth_mm"] / scale).astype(np.uint16)).save(scene / "depth" / f"{i:06d}.png")
            gt[str(i)], infos[str(i)] = [], []
            for k, (inst, (full, visible)) in enumerate(zip(p["instances"], r["masks"])):
                gt[str(i)].append({"cam_R_m2c": inst["R"].reshape(9).tolist(), "cam_t_m2c": inst["t_mm"].tolist(),
                                   "obj_id": inst["obj_id"]})
                infos[str(i)].append(instance_info(full, visible))
                Image.fromarray((visible * 255).astype(np.uint8)).save(scene / "mask_visib" / f"{i:06d}_{k:06d}.png")
            cams[str(i)] = {"cam_K": K.reshape(9).tolist(), "depth_scale": scale}
            if (i + 1) % FLUSH_EVERY == 0 or i + 1 == num_images:
                for name, data in (("scene_gt", gt), ("scene_camera", cams), ("scene_gt_info", infos)):
                    write_json_atomic(scene / f"{name}.json", data)
                if progress:
                    rate = (i + 1 - start) / max(time.time() - t0, 1e-9)
                    print(f"{out}: {i + 1}/{num_images} scene images ({rate:.1f} img/s)", flush=True)
    finally:
        renderer.close()
    return out


def _load_or_empty(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _copy_models(models: list[SceneModel], src: Path, dst: Path):
    dst.mkdir(parents=True, exist_ok=True)
    info = json.loads((src / "models_info.json").read_text())
    for m in models:
        for f in src.glob(m.path.stem + ".*"):
            if not (dst / f.name).is_file():
                shutil.copy(f, dst / f.name)
    for f in src.glob("*.png"):  # textures referenced by .mtl files keep their names
        if not (dst / f.name).is_file():
            shutil.copy(f, dst / f.name)
    write_json_atomic(dst / "models_info.json", {str(m.obj_id): info[str(m.obj_id)] for m in models})


def render_scenes_in_subprocess(models_dir, out, log=None, timeout=None, **flags) -> Path:
    """``python -m render.scenes`` in a subprocess (a GL context must not live in a process that imports
    TensorFlow): flags by name, lists and tuples joined by commas, None left out; its stdout appended to ``log``.
    Returns ``out``; raises :class:`SceneError` with the end of its stderr when it fails."""
    import os
    import subprocess

    from render.testing import REPO_ROOT, subprocess_env

    cmd = [sys.executable, "-m", "render.scenes", f"--models_dir={models_dir}", f"--out={out}"]
    for k, v in flags.items():
        if v is not None:
            cmd.append(f"--{k}={','.join(str(x) for x in v) if isinstance(v, (list, tuple)) else v}")
    with open(log or os.devnull, "a") as fh:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=fh, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    if proc.returncode != 0:
        raise SceneError(f"render.scenes into {out} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return Path(out)


# ------------------------------------------------------------------------------------------------------ command
def define_flags():
    flags.DEFINE_string("models_dir", None, "BOP models folder (models_info.json, obj_NNNNNN.ply/.obj)")
    flags.DEFINE_string("out", None, "BOP root to write (or finish)")
    flags.DEFINE_string("obj_ids", "all", "comma-separated object ids of the models folder, or 'all'")
    flags.DEFINE_integer("num_images", 100, "scene images")
    flags.DEFINE_string("camera", None, "camera JSON (cam_K, width, height) or a BOP scene_camera.json; default: "
                        "LINEMOD's 640x480 camera")
    flags.DEFINE_list("objects_per_image", ["2", "5"], "MIN,MAX different objects per image")
    flags.DEFINE_list("object_size_frac", [str(v) for v in SceneRanges.object_size_frac], "MIN,MAX of an object's "
                      "projected diameter over the shorter image side (the distances seen in practice)")
    flags.DEFINE_string("randomization", "complete", "randomization mode (render/modes.py)")
    flags.DEFINE_string("backgrounds", None, "folder of background photos (randomization real_background)")
    flags.DEFINE_list("exclude_obj_ids", [], "background photos showing these object ids (objects_in_frame.json of "
                      "--backgrounds) are left out: give the test objects' ids, so no photo of them leaks in")
    flags.DEFINE_string("distractors_dir", None, "BOP models folder of distractors: 0-3 of its objects per image, "
                        "shown but not annotated")
    flags.DEFINE_string("texture_photos", None, "folder of photos (e.g. ../shared/data/ycbv_backgrounds) that random "
                        "object appearances cut textures from (real print on untextured models); --exclude_obj_ids "
                        "applies")
    flags.DEFINE_enum("poses", SceneRanges.poses, POSE_MODES, "how objects are rotated: uniformly on SO(3), or "
                      "resting on a table (a bounding-box face down, the table seen from 10-70 degrees above)")
    flags.DEFINE_float("occluder_share", SceneRanges.occluder_share, "the chance that a distractor is put in front "
                       "of an object, hiding part of it (needs --distractors_dir)")
    flags.DEFINE_float("part_material_share", SceneRanges.part_material_share, "the chance that each end part of an "
                       "object (a lid, a base, a box's side: the outer 15 percent of its extent along an axis) wears a "
                       "random material of its own")
    flags.DEFINE_integer("seed", 0, "seed of every random choice")
    flags.DEFINE_string("split", "test", "BOP split folder to write")
    flags.DEFINE_integer("scene_id", 0, "BOP scene id to write")


def parse_obj_ids(text: str) -> list[int] | None:
    """``'all'`` -> None; ``'1,5,6'`` -> [1, 5, 6]; anything else: :class:`SceneError`."""
    if text.strip().lower() == "all":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SceneError(f"--obj_ids must be 'all' or comma-separated integers, got {text!r}") from None


def main(argv):
    del argv
    F = flags.FLAGS
    if not F.models_dir or not F.out:
        raise app.UsageError("--models_dir and --out are required")
    try:
        lo, hi = (int(x) for x in F.objects_per_image)
        render_scenes(F.models_dir, F.out, parse_obj_ids(F.obj_ids), F.num_images, F.camera, F.randomization,
                      F.seed, F.split, F.scene_id, (lo, hi), F.backgrounds,
                      exclude_obj_ids=[int(x) for x in F.exclude_obj_ids], distractors_dir=F.distractors_dir,
                      object_size_frac=tuple(float(x) for x in F.object_size_frac),
                      texture_photos=F.texture_photos, poses=F.poses, occluder_share=F.occluder_share,
                      part_material_share=F.part_material_share)
    except (PoseInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
