"""The three built-in objects, made in code and saved in BOP form (millimetres, ``models_info.json``).

They mirror the thesis' three real objects:

* ``toy`` (obj_id 1): non-convex, asymmetric, several coloured parts (PLY with vertex colours).
* ``box`` (obj_id 2): a cuboid whose six faces carry a printed texture generated here, so the box has box-shaped
  geometric symmetries but no visual symmetry (OBJ + MTL + PNG texture).
* ``symmetric`` (obj_id 3): a body of revolution about its z axis (PLY, one colour); score it with ADD-S.

``python -m pose_core.objects --out DIR`` writes all three. :func:`builtin_model_path` writes them once into a cache
folder and returns the mesh path, so any code can ask for ``"toy"`` where a user would give a mesh file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose_core import PoseInputError
from pose_core.mesh import models_info_entry

MODELS_VERSION = 1  # bump when the geometry changes, so caches are rebuilt


@dataclass(frozen=True)
class BuiltinObject:
    name: str
    obj_id: int
    filename: str
    symmetric: bool


BUILTIN_OBJECTS = {
    "toy": BuiltinObject("toy", 1, "obj_000001.ply", False),
    "box": BuiltinObject("box", 2, "obj_000002.obj", False),
    "symmetric": BuiltinObject("symmetric", 3, "obj_000003.ply", True),
}


def _colour(mesh, rgb):
    mesh.visual.vertex_colors = np.tile(np.array([*rgb, 255], dtype=np.uint8), (len(mesh.vertices), 1))
    return mesh


def make_toy():
    """A small figure ~110 mm tall: body, head, two arms of different length, a nose and one ear."""
    import trimesh
    from trimesh import creation

    T = trimesh.transformations.translation_matrix
    Rx = trimesh.transformations.rotation_matrix
    parts = [
        _colour(creation.box(extents=(50, 36, 56), transform=T((0, 0, 0))), (200, 60, 50)),          # body
        _colour(creation.icosphere(subdivisions=3, radius=24).apply_translation((4, 0, 50)), (230, 190, 60)),  # head
        _colour(creation.cylinder(radius=7, height=58, sections=24,
                                  transform=T((-38, 4, 8)) @ Rx(np.pi / 3, (0, 1, 0))), (60, 120, 200)),  # long arm
        _colour(creation.cylinder(radius=8, height=30, sections=24,
                                  transform=T((34, -2, 14)) @ Rx(np.pi / 2, (0, 1, 0))), (60, 170, 90)),  # short arm
        _colour(creation.cone(radius=8, height=22, sections=24,
                              transform=T((4, -20, 52)) @ Rx(np.pi / 2, (1, 0, 0))), (240, 120, 30)),  # nose
        _colour(creation.box(extents=(10, 8, 20), transform=T((-14, 6, 78)) @ Rx(0.4, (0, 1, 0))),
                (120, 70, 160)),                                                                         # one ear
        _colour(creation.box(extents=(18, 30, 22), transform=T((-14, 0, -38))), (90, 90, 90)),          # one leg
        _colour(creation.box(extents=(18, 30, 14), transform=T((16, 6, -34))), (40, 40, 40)),           # other leg
    ]
    toy = trimesh.util.concatenate(parts)
    toy.apply_translation(-toy.bounds.mean(axis=0))  # origin at the box centre, as BOP models
    return toy


def _box_texture(size_px: int = 512):
    """A 4x2-cell texture atlas: each used cell a different 'printed' face (bands, text, logo, barcode)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1234)
    cell = size_px // 4
    img = Image.new("RGB", (4 * cell, 2 * cell), (245, 240, 225))
    draw = ImageDraw.Draw(img)
    palettes = [(200, 30, 40), (250, 200, 20), (30, 90, 180), (20, 140, 70), (120, 40, 140), (240, 120, 20)]
    for i in range(6):
        x0, y0 = (i % 4) * cell, (i // 4) * cell
        base = palettes[i]
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(c * 0.35 + 160) for c in base))
        # a different layout per face, none symmetric under flips
        for k in range(i + 2):
            yy = y0 + int(cell * (0.1 + 0.8 * k / (i + 2)))
            draw.rectangle([x0 + cell // 10, yy, x0 + int(cell * (0.3 + 0.1 * k)), yy + cell // 16], fill=base)
        draw.ellipse([x0 + cell * 0.55, y0 + cell * 0.1, x0 + cell * 0.9, y0 + cell * 0.45], fill=palettes[(i + 2) % 6])
        draw.polygon([(x0 + cell * 0.6, y0 + cell * 0.9), (x0 + cell * 0.95, y0 + cell * 0.6),
                      (x0 + cell * 0.95, y0 + cell * 0.9)], fill=(20, 20, 20))
        draw.text((x0 + cell * 0.12, y0 + cell * 0.05), f"SIDE {i + 1}", fill=(10, 10, 10))
        bars = rng.integers(1, 4, size=14)
        bx = x0 + cell * 0.12
        for b in bars:  # a barcode strip
            draw.rectangle([bx, y0 + cell * 0.7, bx + b, y0 + cell * 0.85], fill=(0, 0, 0))
            bx += b + 2
    return img


def make_box(extents_mm=(60.0, 160.0, 210.0)):
    """A cracker-box-sized cuboid with a generated print on each face (textured, UV-mapped)."""
    import trimesh

    ex, ey, ez = (e / 2.0 for e in extents_mm)
    # Each face: 4 corners in counter-clockwise order seen from outside, and its atlas cell.
    faces = [
        ([(ex, -ey, -ez), (ex, ey, -ez), (ex, ey, ez), (ex, -ey, ez)], 0),      # +x
        ([(-ex, ey, -ez), (-ex, -ey, -ez), (-ex, -ey, ez), (-ex, ey, ez)], 1),  # -x
        ([(ex, ey, -ez), (-ex, ey, -ez), (-ex, ey, ez), (ex, ey, ez)], 2),      # +y
        ([(-ex, -ey, -ez), (ex, -ey, -ez), (ex, -ey, ez), (-ex, -ey, ez)], 3),  # -y
        ([(-ex, -ey, ez), (ex, -ey, ez), (ex, ey, ez), (-ex, ey, ez)], 4),      # +z
        ([(-ex, ey, -ez), (ex, ey, -ez), (ex, -ey, -ez), (-ex, -ey, -ez)], 5),  # -z
    ]
    vertices, uvs, tris = [], [], []
    margin = 0.01
    for corners, cell in faces:
        c0, r0 = (cell % 4) / 4.0, (cell // 4) / 2.0
        u0, u1 = c0 + margin, c0 + 0.25 - margin
        # atlas rows: image top is v = 1 in OBJ uv convention
        v1, v0 = 1.0 - (r0 + margin), 1.0 - (r0 + 0.5 - margin)
        base = len(vertices)
        vertices += corners
        uvs += [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
        tris += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    visual = trimesh.visual.TextureVisuals(uv=np.array(uvs), image=_box_texture())
    return trimesh.Trimesh(np.array(vertices, dtype=np.float64), np.array(tris), visual=visual, process=False)


def make_symmetric():
    """A body of revolution about z (a bottle-like vase, ~150 mm tall), one colour."""
    from trimesh import creation

    # (radius, z) profile from the bottom centre to the top centre; closed at both ends.
    profile = np.array([
        [0.0, -75], [38, -75], [42, -68], [44, -40], [42, -5], [34, 20], [22, 40],
        [16, 55], [17, 68], [19, 75], [0.0, 75],
    ])
    mesh = creation.revolve(profile, sections=64)
    return _colour(mesh, (70, 150, 190))


_BUILDERS = {"toy": make_toy, "box": make_box, "symmetric": make_symmetric}


def write_builtin_models(out_dir: str) -> Path:
    """Writes the three objects and ``models_info.json`` (BOP form, mm) into ``out_dir``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, spec in BUILTIN_OBJECTS.items():
        mesh = _BUILDERS[name]()
        path = out / spec.filename
        if path.suffix == ".obj":
            # trimesh writes the .mtl and the texture PNG beside the .obj
            mesh.export(str(path), include_normals=True, mtl_name=path.stem + ".mtl")
        else:
            mesh.export(str(path))
        entry = models_info_entry(mesh)
        if spec.symmetric:
            entry["symmetries_continuous"] = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
        info[str(spec.obj_id)] = entry
    (out / "models_info.json").write_text(json.dumps(info, indent=1))
    return out


def cache_dir() -> Path:
    root = os.environ.get("SYNTHPOSE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "synthpose"))
    return Path(root) / f"builtin_models_v{MODELS_VERSION}"


def builtin_models_dir() -> Path:
    """The folder holding the built-in models in BOP form, written on first use."""
    d = cache_dir()
    if not (d / "models_info.json").is_file():
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        write_builtin_models(tmp)
        try:
            os.replace(tmp, d)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return d


def builtin_model_path(name: str) -> Path:
    """Mesh file of a built-in object (``toy``, ``box`` or ``symmetric``)."""
    if name not in BUILTIN_OBJECTS:
        raise PoseInputError(f"unknown built-in object {name!r}; choose one of {sorted(BUILTIN_OBJECTS)}")
    return builtin_models_dir() / BUILTIN_OBJECTS[name].filename


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the models and models_info.json into")
    args = parser.parse_args(argv)
    out = write_builtin_models(args.out)
    print(f"wrote {', '.join(o.filename for o in BUILTIN_OBJECTS.values())} and models_info.json to {out}")


if __name__ == "__main__":
    main()
