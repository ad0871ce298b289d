"""Sampling of everything random in a sample, as plain numbers (no GL): pose, lights, backgrounds, textures, noise.

Each sample's randomness comes from ``(seed, global sample index)`` only, one independent stream per axis
(:func:`sample_rng`), so results do not depend on ``--workers`` or sharding, and two modes with the same seed give
the same poses (and the same backgrounds where both randomize them): the ablation compares like with like.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose_core import PoseInputError
from pose_core.geometry import random_rotations

# One stream per axis; the numbers are part of the data format (changing them changes every dataset).
STREAM_POSE, STREAM_BACKGROUND, STREAM_OBJECT, STREAM_LIGHT, STREAM_NOISE, STREAM_DISTRACTORS = range(6)
# Which source a random background or appearance comes from (--photo_background_prob, --own_appearance_prob): streams
# of their own, drawn only when those probabilities are set, so that the other draws stay those of older versions.
STREAM_APPEARANCE_SOURCE, STREAM_BACKGROUND_SOURCE = 6, 7

PLAIN_BACKGROUND_RGB = (128, 128, 128)


def sample_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(stream)])


def draw_source(seed: int, index: int, stream: int, prob: float) -> bool:
    """True with probability ``prob`` for sample ``index``, from ``stream`` alone; nothing is drawn when ``prob`` is
    0, so that datasets made without the option keep their streams."""
    return prob > 0 and sample_rng(seed, index, stream).uniform() < prob


@dataclass
class Ranges:
    """Documented ranges of every randomized quantity (docs/render.md lists them)."""

    object_size_frac: tuple = (0.35, 0.9)     # projected diameter / image size
    off_centre_frac: float = 0.15              # object centre within +-this*size of the image centre ...
    out_of_frame_prob: float = 0.1             # ... or, with this probability, anywhere up to the image border
    elevation_deg: tuple | None = None         # None: rotations uniform on SO(3); else camera elevation range
    num_lights: tuple = (1, 4)                 # inclusive
    light_types: tuple = ("directional", "point", "spot")
    directional_intensity: tuple = (1.0, 6.0)
    point_intensity: tuple = (1.0, 12.0)       # scene in metres, pyrender's 1/d^2 falloff
    light_distance_m: tuple = (0.3, 1.5)
    light_colour_min: float = 0.7              # each channel in [min, 1] then normalised to max 1
    ambient: tuple = (0.0, 0.6)
    metallic: tuple = (0.0, 0.7)
    roughness: tuple = (0.2, 1.0)
    texture_prob: float = 0.5                  # random procedural texture, else one random colour
    photo_texture_prob: float = 0.5            # of the textures, the share cut from photos (when photos are given)
    photo_background_prob: float = 0.0        # "random" backgrounds: the share cut from photos (--backgrounds)
    own_appearance_prob: float = 0.0          # "random" object appearance: the share that shows the mesh's own
    noise_sigma: tuple = (0.0, 8.0)            # Gaussian pixel noise, in grey levels
    blur_prob: float = 0.3
    blur_radius: tuple = (0.3, 1.2)
    brightness: tuple = (-30.0, 30.0)          # added grey levels
    contrast: tuple = (0.75, 1.3)              # about grey 128
    saturation: tuple = (0.7, 1.3)
    num_distractors: tuple = (1, 3)
    extra: dict = field(default_factory=dict)


FIXED_LIGHT = {
    "ambient": [0.3, 0.3, 0.3],
    "lights": [{"type": "directional", "colour": [1.0, 1.0, 1.0], "intensity": 3.0,
                "direction": list(np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0]))}],
}


# ------------------------------------------------------------------------------------------------------- pose
def sample_pose(rng, K, image_size, diameter_mm, centre_mm, ranges: Ranges):
    """Model-to-camera ``R [3, 3]``, ``t_mm [3]``: the object's bounding-box centre lands at a random pixel, at the
    depth that makes its projected diameter a random fraction of the image size."""
    if ranges.elevation_deg is None:
        R = random_rotations(1, rng)[0]
    else:
        lo, hi = np.radians(ranges.elevation_deg)
        elev = rng.uniform(lo, hi)
        azim = rng.uniform(0, 2 * np.pi)
        roll = rng.uniform(-np.pi, np.pi)
        # camera looking at the origin from (azim, elev) in the model frame (model z up)
        d = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
        z_cam = -d  # camera forward, in model coordinates
        x_cam = np.cross(z_cam, [0.0, 0.0, 1.0])
        if np.linalg.norm(x_cam) < 1e-6:
            x_cam = np.array([1.0, 0.0, 0.0])
        x_cam /= np.linalg.norm(x_cam)
        y_cam = np.cross(z_cam, x_cam)
        R_view = np.stack([x_cam, y_cam, z_cam])  # rows: camera axes in model coords -> model-to-camera
        c, s = np.cos(roll), np.sin(roll)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R_view
    frac = rng.uniform(*ranges.object_size_frac)
    f = float(K[0, 0])
    z = f * diameter_mm / (frac * image_size)
    if rng.uniform() < ranges.out_of_frame_prob:
        u, v = rng.uniform(0, image_size - 1, size=2)
    else:
        u, v = (image_size - 1) / 2.0 + rng.uniform(-1, 1, size=2) * ranges.off_centre_frac * image_size
    p_cam = z * np.linalg.solve(K, np.array([u, v, 1.0]))
    t = p_cam - R @ centre_mm
    return R, t


# ------------------------------------------------------------------------------------------------------- lights
def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _light_colour(rng, ranges):
    c = rng.uniform(ranges.light_colour_min, 1.0, size=3)
    return list(c / c.max())


def sample_lights(rng, t_m, ranges: Ranges) -> dict:
    """Random light rig in the camera frame (OpenCV axes, metres); ``t_m`` is the object position."""
    lights = []
    n = int(rng.integers(ranges.num_lights[0], ranges.num_lights[1] + 1))
    for _ in range(n):
        kind = ranges.light_types[int(rng.integers(len(ranges.light_types)))]
        # lights come from the camera's hemisphere (z < object z) most of the time
        d = _unit(rng.normal(size=3))
        if d[2] > 0.3:
            d[2] = -d[2]
        colour = _light_colour(rng, ranges)
        if kind == "directional":
            lights.append({"type": kind, "colour": colour, "direction": list(-d),
                           "intensity": float(rng.uniform(*ranges.directional_intensity))})
        else:
            dist = rng.uniform(*ranges.light_distance_m)
            pos = np.asarray(t_m) + d * dist
            entry = {"type": kind, "colour": colour, "position": list(pos),
                     "intensity": float(rng.uniform(*ranges.point_intensity) * dist * dist)}
            if kind == "spot":
                entry["direction"] = list(-d)
                entry["outer_cone"] = float(rng.uniform(0.3, 0.8))
            lights.append(entry)
    amb = rng.uniform(*ranges.ambient) * np.asarray(_light_colour(rng, ranges))
    return {"ambient": list(amb), "lights": lights}


# ------------------------------------------------------------------------------------------------------- images
def procedural_image(rng, size: int) -> np.ndarray:
    """A random ``[size, size, 3]`` uint8 image: flat, gradient, stripes, checkers, noise or shapes (or a blend)."""
    kind = int(rng.integers(6))
    img = _procedural(rng, size, kind)
    if rng.uniform() < 0.3:  # blend with a second pattern
        other = _procedural(rng, size, int(rng.integers(6)))
        a = rng.uniform(0.3, 0.7)
        img = img * a + other * (1 - a)
    return np.clip(img, 0, 255).astype(np.uint8)


def _colours(rng, n):
    return rng.uniform(0, 255, size=(n, 3)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _procedural(rng, size, kind) -> np.ndarray:
    yy, xx = _grid(size)
    if kind == 0:  # flat
        return np.broadcast_to(_colours(rng, 1)[0], (size, size, 3)).astype(np.float32)
    if kind in (1, 2, 3):
        ang = rng.uniform(0, np.pi)
        s = xx * np.cos(ang) + yy * np.sin(ang)
        c = _colours(rng, 2)
        if kind == 1:  # linear gradient
            w = (s - s.min()) / max(s.max() - s.min(), 1e-6)
        elif kind == 2:  # stripes, soft or hard
            w = 0.5 + 0.5 * np.sin(2 * np.pi * s * rng.uniform(2, 16) + rng.uniform(0, 2 * np.pi))
            if rng.uniform() < 0.5:
                w = (w > 0.5).astype(np.float32)
        else:  # checkers (rotated)
            freq = rng.uniform(2, 12)
            s2 = -xx * np.sin(ang) + yy * np.cos(ang)
            w = ((np.floor(s * freq) + np.floor(s2 * freq)) % 2).astype(np.float32)
        return c[0] * w[..., None] + c[1] * (1 - w[..., None])
    if kind == 4:  # value noise: a coarse random grid upsampled
        from PIL import Image

        g = int(rng.integers(2, 17))
        grid = rng.uniform(0, 255, size=(g, g, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR), dtype=np.float32)
    # random shapes on a random base
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(int(v) for v in _colours(rng, 1)[0]))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 15))):
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
        w, h = rng.uniform(0.05, 0.6, size=2) * size
        fill = tuple(int(v) for v in _colours(rng, 1)[0])
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif shape == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            pts = rng.uniform(0, 1, size=(3, 2)) * [w, h] + [x0, y0]
            draw.polygon([tuple(p) for p in pts], fill=fill)
    return np.asarray(img, dtype=np.float32)


PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg")


class BackgroundError(PoseInputError):
    """A background photo folder that cannot serve (absent, empty, or every photo shows the object)."""


def list_backgrounds(folder: str, exclude_obj_id, flag: str = "--backgrounds") -> list[str]:
    """Photo files of ``folder`` (sorted), without those that show ``exclude_obj_id`` (an id, several ids, or None)
    per objects_in_frame.json. ``flag``: the option that named the folder, for the error messages."""
    d = Path(folder)
    if not d.is_dir():
        raise BackgroundError(f"{flag} folder {folder!r} does not exist")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
    if not files:
        raise BackgroundError(f"{flag} folder {folder!r} holds no images ({', '.join(PHOTO_EXTENSIONS)})")
    excluded = ({int(exclude_obj_id)} if isinstance(exclude_obj_id, (int, str))
                else {int(v) for v in exclude_obj_id or ()})
    if excluded:
        index = d / "objects_in_frame.json"
        if not index.is_file():
            print(f"render: warning: photos showing obj_id {sorted(excluded)} are to be left out, but {index} "
                  f"is absent: no photo can be excluded", file=sys.stderr)
        else:
            try:
                shown = json.loads(index.read_text())
            except json.JSONDecodeError as e:
                raise BackgroundError(f"{index}: not valid JSON ({e})") from None
            files = [p for p in files if not excluded & {int(v) for v in shown.get(p.name, [])}]
            if not files:
                raise BackgroundError(f"every photo in {folder!r} shows obj_id {sorted(excluded)} "
                                    f"(objects_in_frame.json): no background left")
    return [str(p) for p in files]


def photo_loaders(files) -> list[tuple[str, object]]:
    """``[(name, loader)]`` of photo ``files`` for :func:`real_background` and :func:`object_appearance`: each
    loader decodes its photo (RGB uint8) on first use and keeps it."""
    return [(Path(p).name, functools.lru_cache(maxsize=1)(functools.partial(_load_rgb, p))) for p in files]


def _load_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def real_background(rng, photos: list, size: int) -> tuple[np.ndarray, str]:
    """A random square crop (random scale, random horizontal flip) of one of ``photos`` = [(name, loader)]."""
    from PIL import Image

    name, load = photos[int(rng.integers(len(photos)))]
    img = load()
    h, w = img.shape[:2]
    side = int(rng.uniform(min(size, h, w), min(h, w)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
    out = np.asarray(crop)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out), name


# Side of a texture cut from a photo, pixels: larger than a procedural one, so print and edges keep some detail
PHOTO_TEXTURE_SIZE = 128


def object_appearance(rng, ranges: Ranges, texture_size: int = 64, texture_photos: list = ()) -> dict:
    """Random material for the object or a distractor: one colour or a texture, metallic, roughness.

    The texture is procedural (:func:`procedural_image`), or with ``texture_photos`` (``[(name, loader)]`` as for
    :func:`real_background`) and probability ``ranges.photo_texture_prob`` a random square cut from one of those
    photos: real print, labels and clutter on an untextured model, so that real printed things are not all
    "background" to a network that saw them only behind the objects. Without photos the random draws are those of
    older versions (the same seeds give the same appearances)."""
    out = {"metallic": float(rng.uniform(*ranges.metallic)), "roughness": float(rng.uniform(*ranges.roughness))}
    if rng.uniform() < ranges.texture_prob:
        if texture_photos and rng.uniform() < ranges.photo_texture_prob:
            out["texture"] = real_background(rng, texture_photos, PHOTO_TEXTURE_SIZE)[0]
        else:
            out["texture"] = procedural_image(rng, texture_size)
        out["colour"] = [1.0, 1.0, 1.0]
    else:
        out["texture"] = None
        out["colour"] = list(rng.uniform(0.05, 1.0, size=3))
    return out


def apply_noise(rng, img: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Colour jitter (brightness, contrast about grey 128, saturation), optional Gaussian blur, pixel noise."""
    x = np.asarray(img, dtype=np.float32)
    grey = x @ np.full((3, 1), 1.0 / 3.0, np.float32)
    sat, con, bri = rng.uniform(*ranges.saturation), rng.uniform(*ranges.contrast), rng.uniform(*ranges.brightness)
    # saturation about the pixel's grey, then contrast about 128 and brightness, in one pass
    x = (grey * (1.0 - sat) + x * sat) * np.float32(con) + np.float32(128.0 * (1.0 - con) + bri)
    blur = rng.uniform() < ranges.blur_prob
    radius = rng.uniform(*ranges.blur_radius)
    sigma = rng.uniform(*ranges.noise_sigma)
    if blur:
        from PIL import Image, ImageFilter

        x = np.asarray(Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    if sigma > 0.5:
        x = x + rng.standard_normal(size=x.shape, dtype=np.float32) * sigma
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
