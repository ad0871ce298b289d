"""Renderer throughput: images per second at 128x128 in `complete` mode, everything included (backgrounds, lights,
GL rendering, noise, PNG encoding, TFRecord writing), plus a per-phase profile of one worker.

    python -m render.bench [--num_images 1200] [--workers 2] [--mesh PATH] [--profile_images 150]
    (make bench-render)

The mesh defaults to the scanned LINEMOD ape (../shared/data/lmo_models/obj_000001.ply, 11.7k triangles), or the
built-in `toy` subdivided to ~10k triangles when the shared data is absent.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import render  # noqa: F401

from absl import app, flags

from render import generate as g  # noqa: E402  (its flags: --mesh, --num_images, --workers, --image_size, ...)

FLAGS = flags.FLAGS
flags.DEFINE_integer("profile_images", 150, "Images of the single-process per-phase profile (0: skip).")
FLAGS.set_default("num_images", 1200)


def default_mesh(tmp: Path) -> str:
    from pose_core import shared_data_dir

    lmo = shared_data_dir() / "lmo_models" / "obj_000001.ply"
    if lmo.is_file():
        return str(lmo)
    from pose_core.mesh import load_mesh
    from pose_core.objects import builtin_model_path

    mesh = load_mesh(builtin_model_path("toy"))
    while len(mesh.faces) < 9000:
        mesh = mesh.subdivide()
    path = tmp / "toy_subdivided.ply"
    mesh.export(str(path))
    return str(path)


def throughput(mesh: str, out: Path) -> dict:
    opts = {name: g.FLAGS[name].default for name in g.DATA_FLAGS + g.EXECUTION_FLAGS}
    opts.update(mesh=mesh, out=str(out), num_images=FLAGS.num_images, num_shards=4, workers=FLAGS.workers,
                image_size=FLAGS.image_size, randomization=FLAGS.randomization, progress=False,
                distractors=FLAGS.distractors, chunk_size=8)
    g.generate(opts)
    return dict(g.LAST_RUN_STATS)


def _profile_worker(mesh: str, n: int, image_size: int, mode: str, distractors: bool) -> dict:
    """Per-phase milliseconds per image in one process (run in a child: no TF in a GL process)."""

    from render.engine import RenderConfig, SampleRenderer
    from render.records import encode_example

    r = SampleRenderer(RenderConfig(mesh_path=mesh, obj_id=1, image_size=image_size, mode=mode,
                                    distractors=distractors))
    gl_render = r.renderer.render
    t = {"params (pose, lights, background, texture)": 0.0, "GL render + readback": 0.0,
         "composite + noise/blur/jitter + masks + depth": 0.0, "PNG encode (image, mask, depth) + proto": 0.0}
    gl = [0.0]

    def timed_render(*a, **k):
        t0 = time.perf_counter()
        out = gl_render(*a, **k)
        gl[0] += time.perf_counter() - t0
        return out

    r.renderer.render = timed_render
    for i in range(10):  # warm-up (shader compilation)
        r.render_index(100000 + i)
    gl[0] = 0.0
    t_all = time.perf_counter()
    c_all = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        p = r.sample_params(i)
        t1 = time.perf_counter()
        s = r.render(p)
        t2 = time.perf_counter()
        encode_example(s, compress_level=1)
        t3 = time.perf_counter()
        t["params (pose, lights, background, texture)"] += t1 - t0
        t["composite + noise/blur/jitter + masks + depth"] += t2 - t1
        t["PNG encode (image, mask, depth) + proto"] += t3 - t2
    total = time.perf_counter() - t_all
    cpu_total = time.process_time() - c_all
    t["GL render + readback"] = gl[0]
    t["composite + noise/blur/jitter + masks + depth"] -= gl[0]
    r.close()
    out = {k: 1000 * v / n for k, v in t.items()}
    out["total"] = 1000 * total / n
    out["total CPU (all threads)"] = 1000 * cpu_total / n
    return out


def main(argv):
    import json
    import multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        tmp = Path(tmp)
        mesh = FLAGS.mesh or default_mesh(tmp)
        import trimesh

        faces = len(trimesh.load(mesh, process=False).faces)
        print(f"mesh {mesh} ({faces} triangles), {FLAGS.image_size}x{FLAGS.image_size}, mode "
              f"{FLAGS.randomization}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
        if FLAGS.profile_images > 0:
            ctx = mp.get_context("spawn")
            res = tmp / "profile.json"
            p = ctx.Process(target=_profile_worker_main, args=(mesh, FLAGS.profile_images, str(res),
                                                               FLAGS.image_size, FLAGS.randomization,
                                                               FLAGS.distractors))
            p.start()
            p.join()
            prof = json.loads(res.read_text())
            print(f"one worker, per image (ms), {FLAGS.profile_images} images:")
            for k, v in prof.items():
                print(f"  {k:45s} {v:6.2f}")
            print(f"  => {1000 / prof['total']:.1f} images/s per process")
        stats = throughput(mesh, tmp / "data")
        print(f"throughput, {stats['workers']} workers, {stats['images']} images written to TFRecords: "
              f"{stats['steady_images_per_s']:.1f} images/s steady state; "
              f"{stats['images'] / stats['wall_s']:.1f} images/s end to end "
              f"(wall {stats['wall_s']:.1f} s incl. {stats['startup_s']:.1f} s startup)")
        cpu = stats["worker_cpu_ms_per_image"] + stats["writer_cpu_ms_per_image"]
        ncpu = os.cpu_count() or 1
        print(f"CPU per image: {stats['worker_cpu_ms_per_image']:.1f} ms in the render workers (GL threads "
              f"included) + {stats['writer_cpu_ms_per_image']:.1f} ms in the writer = {cpu:.1f} ms; "
              f"{ncpu} idle cores could do at most {1000 * ncpu / cpu:.0f} images/s "
              f"(load average now {os.getloadavg()[0]:.2f})")
        print(f"RESULT render_images_per_s={stats['steady_images_per_s']:.1f}")


def _profile_worker_main(mesh, n, res, image_size, mode, distractors):
    import json

    Path(res).write_text(json.dumps(_profile_worker(mesh, n, image_size, mode, distractors)))


if __name__ == "__main__":
    app.run(main)
