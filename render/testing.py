"""Helpers for the render tests (and for scripts that drive ``python -m render.generate`` in subprocesses).

Rendering happens in subprocesses: a test process that also imports TensorFlow must not create an EGL context.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def generate_cmd(out, **flags) -> list[str]:
    cmd = [sys.executable, "-m", "render.generate", f"--out={out}", "--noprogress"]
    for k, v in flags.items():
        if isinstance(v, bool):
            cmd.append(f"--{k}" if v else f"--no{k}")
        elif v is not None:
            cmd.append(f"--{k}={v}")
    return cmd


def run_scenes(models_dir, out, timeout=300, **flags) -> Path:
    """``python -m render.scenes`` in a subprocess (flags by name; tuples/lists joined by commas); returns ``out``,
    raising AssertionError with its stderr when it fails."""
    from render.scenes import SceneError, render_scenes_in_subprocess

    try:
        return render_scenes_in_subprocess(models_dir, out, timeout=timeout, **flags)
    except SceneError as e:
        raise AssertionError(str(e)) from None


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def start_generate(out, **flags) -> subprocess.Popen:
    return subprocess.Popen(generate_cmd(out, **flags), cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_generate(out, timeout=300, **flags) -> subprocess.CompletedProcess:
    return subprocess.run(generate_cmd(out, **flags), cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_many(jobs: list[tuple], timeout=300, check=True) -> list[tuple[int, str]]:
    """Runs ``[(out, flags dict), ...]`` side by side; returns ``[(returncode, stderr)]``."""
    procs = [start_generate(out, **flags) for out, flags in jobs]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        results.append((p.returncode, err))
    if check:
        for (out, _), (rc, err) in zip(jobs, results):
            if rc != 0:
                raise AssertionError(f"render.generate --out={out} failed with exit code {rc}:\n{err[-3000:]}")
    return results


def surface_distance_mm(mesh, points_mm):
    """Exact distance ``[N]`` from each point to the mesh surface (closest point over all triangles).

    trimesh.proximity.closest_point needs the optional rtree package, which is not installed; this prunes the
    triangles with a k-d tree of their centroids instead: the nearest centroid at distance d bounds the distance,
    so only triangles whose centroid lies within d + (largest centroid-to-vertex distance) can be closer."""
    import numpy as np
    import trimesh
    from scipy.spatial import cKDTree

    triangles = np.asarray(mesh.triangles, dtype=np.float64)
    centroids = triangles.mean(axis=1)
    reach = np.linalg.norm(triangles - centroids[:, None], axis=2).max()
    tree = cKDTree(centroids)
    d_nearest, _ = tree.query(points_mm)
    candidates = tree.query_ball_point(points_mm, d_nearest + reach + 1e-9)
    point_of_pair = np.repeat(np.arange(len(points_mm)), [len(c) for c in candidates])
    face_of_pair = np.concatenate([np.asarray(c, dtype=np.int64) for c in candidates])
    closest = trimesh.triangles.closest_point(triangles[face_of_pair], points_mm[point_of_pair])
    out = np.full(len(points_mm), np.inf)
    np.minimum.at(out, point_of_pair, np.linalg.norm(closest - points_mm[point_of_pair], axis=1))
    return out
