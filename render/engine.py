"""The offscreen renderer of one worker: one EGL context, one pyrender Scene, reused for every sample.

Per sample only node poses, materials, light parameters and visibility flags change; the object mesh is uploaded
once. The scene frame IS the OpenCV camera frame (in metres): objects sit at their model-to-camera pose and the
pyrender camera at :func:`pose_core.geometry.opengl_camera_pose`. Backgrounds are composited in numpy with the
rendered alpha (the GL clear colour is transparent), so only the object and distractors are rasterized.

No TensorFlow here (see render/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import render  # noqa: F401  (sets PYOPENGL_PLATFORM=egl before pyrender is imported)

import numpy as np

from pose_core import PoseInputError
from pose_core.geometry import bbox_from_mask, intrinsics, opengl_camera_pose, pose_matrix
from render import randomize as rz
from render.modes import mode_axes
from render.records import encode_example

MM = 1e-3  # the GL scene is in metres (pyrender's light falloff is 1/d^2)
MAX_LIGHTS_PER_TYPE = 4
MAX_DISTRACTORS = 3
DISTRACTOR_SHAPES = ("box", "sphere", "cylinder", "capsule")


@dataclass
class RenderConfig:
    """Everything a worker needs to render sample ``i`` of a dataset (picklable)."""

    mesh_path: str
    obj_id: int
    image_size: int = 128
    focal_px: float | None = None      # None: equal to image_size
    seed: int = 0
    mode: str = "complete"
    mesh_scale: float = 1.0
    background_files: list = field(default_factory=list)  # real photos (real_background, --photo_background_prob)
    texture_files: list = field(default_factory=list)  # photos random appearances cut textures from (any mode)
    distractors: bool = False
    png_compress_level: int = 1
    msaa: bool = False                 # 4x multisampling: anti-aliased edges, ~4x slower on llvmpipe
    fast_shader: bool = True           # render/shaders/mesh.* instead of pyrender's PBR shader (~25% faster)
    ranges: rz.Ranges = field(default_factory=rz.Ranges)

    def K(self) -> np.ndarray:
        f = float(self.focal_px or self.image_size)
        c = (self.image_size - 1) / 2.0  # OpenCV: centre of the top-left pixel is (0, 0)
        return intrinsics(f, f, c, c)


def spherical_uv(vertices: np.ndarray) -> np.ndarray:
    """Texture coordinates for meshes without their own: longitude/latitude about the bounding-box centre."""
    p = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    r = np.linalg.norm(p, axis=1) + 1e-12
    u = 0.5 + np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi)
    v = 0.5 + np.arcsin(np.clip(p[:, 2] / r, -1, 1)) / np.pi
    return np.stack([u * 3.0, v * 2.0], axis=1)  # a few repeats: textures show at object scale


def random_material_primitive(mesh, faces=None):
    """A pyrender primitive of ``mesh`` (in metres) with generated texture coordinates (:func:`spherical_uv`), for
    random materials (:func:`material` is assigned to its ``material`` per image). ``faces``: the indices of the
    faces it draws (a part of the model, :func:`render.scenes.model_parts`); None: all."""
    import pyrender

    indices = np.asarray(mesh.faces if faces is None else np.asarray(mesh.faces)[faces], np.uint32)
    return pyrender.Primitive(
        positions=np.asarray(mesh.vertices, np.float32), normals=np.asarray(mesh.vertex_normals, np.float32),
        texcoord_0=spherical_uv(np.asarray(mesh.vertices)).astype(np.float32),
        indices=indices, material=pyrender.MetallicRoughnessMaterial())


def can_cull_back_faces(mesh) -> bool:
    """Back faces are culled only for closed, consistently wound meshes (half the triangles, the same picture);
    anything else (open scans, split-vertex OBJ files) is drawn two-sided."""
    return bool(mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0)


def add_opencv_camera(scene, K):
    """The camera of intrinsics ``K`` (OpenCV convention) in a pyrender scene, at the origin looking down +z."""
    import pyrender

    K = np.asarray(K, np.float64)
    # pyrender's window coordinates put pixel centres at half-integers: +0.5 maps OpenCV pixel centres onto them
    cam = pyrender.IntrinsicsCamera(fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]) + 0.5,
                                    cy=float(K[1, 2]) + 0.5, znear=0.01, zfar=100.0)
    return scene.add(cam, pose=opengl_camera_pose())


def offscreen_renderer(width: int, height: int, fast_shader: bool = True):
    """pyrender's offscreen renderer, with the repository's leaner shaders when they are there."""
    import pyrender

    renderer = pyrender.OffscreenRenderer(width, height)
    if fast_shader and (SHADER_DIR / "mesh.frag").is_file() and (SHADER_DIR / "mesh.vert").is_file():
        renderer._renderer._program_cache = _fast_shader_cache()
    return renderer


class ParamSampler:
    """All random choices of each sample as plain numbers (no GL), from (seed, index) only."""

    def __init__(self, config: RenderConfig, mesh):
        from pose_core.mesh import mesh_diameter

        self.cfg = config
        self.axes = mode_axes(config.mode)
        self.ranges = config.ranges
        self.diameter_mm = mesh_diameter(mesh)
        self.centre_mm = (mesh.bounds[0] + mesh.bounds[1]) / 2.0
        self.K = config.K()
        self._photos = rz.photo_loaders(config.background_files)
        if self.axes["background"] == "real" and not self._photos:
            raise PoseInputError("mode real_background needs background photos (--backgrounds)")
        if self.axes["background"] == "random" and self.ranges.photo_background_prob > 0 and not self._photos:
            raise PoseInputError("--photo_background_prob needs background photos (--backgrounds)")
        self._texture_photos = rz.photo_loaders(config.texture_files)

    # ------------------------------------------------------------------------------------------ params
    def sample_params(self, index: int) -> dict:
        """All random choices of sample ``index`` (pure numpy; deterministic in (seed, index))."""
        cfg, rg, axes = self.cfg, self.ranges, self.axes
        seed = cfg.seed
        R, t = rz.sample_pose(rz.sample_rng(seed, index, rz.STREAM_POSE), self.K, cfg.image_size,
                              self.diameter_mm, self.centre_mm, rg)
        p = {"index": int(index), "R": R, "t_mm": t}
        rng_bg = rz.sample_rng(seed, index, rz.STREAM_BACKGROUND)
        background, appearance = axes["background"], axes["object"]
        # a random axis takes the photo / the mesh's own look with its probability (a stream of its own)
        if background == "random" and rz.draw_source(seed, index, rz.STREAM_BACKGROUND_SOURCE,
                                                      rg.photo_background_prob):
            background = "real"
        if appearance == "random" and rz.draw_source(seed, index, rz.STREAM_APPEARANCE_SOURCE,
                                                      rg.own_appearance_prob):
            appearance = "own"
        if background == "random":
            p["background"] = rz.procedural_image(rng_bg, cfg.image_size)
            p["background_kind"] = "procedural"
        elif background == "real":
            p["background"], p["background_kind"] = rz.real_background(rng_bg, self._photos, cfg.image_size)
        else:
            p["background"] = np.full((cfg.image_size, cfg.image_size, 3), rz.PLAIN_BACKGROUND_RGB, np.uint8)
            p["background_kind"] = "plain"
        p["appearance"] = (rz.object_appearance(rz.sample_rng(seed, index, rz.STREAM_OBJECT), rg,
                                                texture_photos=self._texture_photos)
                           if appearance == "random" else "own")
        p["light"] = (rz.sample_lights(rz.sample_rng(seed, index, rz.STREAM_LIGHT), t * MM, rg)
                      if axes["light"] == "random" else rz.FIXED_LIGHT)
        p["noise_rng_seed"] = (seed, index) if axes["noise"] else None
        p["distractors"] = self._sample_distractors(index, R, t) if cfg.distractors else []
        return p

    def _sample_distractors(self, index, R, t):
        rng = rz.sample_rng(self.cfg.seed, index, rz.STREAM_DISTRACTORS)
        n = int(rng.integers(self.ranges.num_distractors[0], self.ranges.num_distractors[1] + 1))
        out = []
        z = t[2]
        for _ in range(n):
            depth = z * rng.uniform(0.55, 1.2)
            # near the object's image position so that it occludes now and then
            uv_obj = self.K @ (t / z)
            uv = uv_obj[:2] + rng.uniform(-0.35, 0.35, size=2) * self.cfg.image_size
            pos = depth * np.linalg.solve(self.K, np.array([uv[0], uv[1], 1.0]))
            size = self.diameter_mm * rng.uniform(0.25, 0.7) * (depth / z)
            scale = size * rng.uniform(0.5, 1.0, size=3)
            out.append({"shape": DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))],
                        "R": rz.random_rotations(1, rng)[0], "t_mm": pos, "scale_mm": scale,
                        "appearance": rz.object_appearance(rng, self.ranges, texture_size=32,
                                                           texture_photos=self._texture_photos)})
        return out


def material(app: dict):
    """A pyrender material for an appearance of :func:`render.randomize.object_appearance`."""
    import pyrender as pr

    tex = None
    if app["texture"] is not None:
        tex = pr.Texture(source=app["texture"], source_channels="RGB",
                         sampler=pr.Sampler(magFilter=0x2601, minFilter=0x2601))  # GL_LINEAR
    return pr.MetallicRoughnessMaterial(baseColorFactor=[*app["colour"], 1.0], baseColorTexture=tex,
                                        metallicFactor=app["metallic"], roughnessFactor=app["roughness"])


class LightRig:
    """The lights of a scene: fixed slots per type (a fixed count keeps one compiled shader); :meth:`set` puts
    exactly the lights of a rig of :func:`render.randomize.sample_lights` in the scene."""

    def __init__(self, scene):
        import pyrender

        self.scene = scene
        self.light_nodes = {"directional": [], "point": [], "spot": []}
        self._active_lights = []
        for _ in range(MAX_LIGHTS_PER_TYPE):
            self.light_nodes["directional"].append(pyrender.Node(light=pyrender.DirectionalLight(intensity=0.0)))
            self.light_nodes["point"].append(pyrender.Node(light=pyrender.PointLight(intensity=0.0)))
            self.light_nodes["spot"].append(pyrender.Node(light=pyrender.SpotLight(intensity=0.0)))

    def set(self, light):
        """Puts exactly the lights of ``light`` in the scene (pyrender passes light counts as uniforms, so the
        shader is not recompiled and unused slots cost nothing)."""
        self.scene.ambient_light = np.asarray(light["ambient"], dtype=np.float64)
        for node in self._active_lights:
            self.scene.remove_node(node)
        self._active_lights = []
        used = {"directional": 0, "point": 0, "spot": 0}
        for spec in light["lights"]:
            kind = spec["type"]
            k = used[kind]
            if k >= MAX_LIGHTS_PER_TYPE:
                continue
            used[kind] += 1
            node = self.light_nodes[kind][k]
            node.light.intensity = float(spec["intensity"])
            node.light.color = np.asarray(spec["colour"], dtype=np.float32)
            pose = np.eye(4)
            if "direction" in spec:  # pyrender lights shine along their node's -z axis
                z = -np.asarray(spec["direction"], dtype=np.float64)
                x = np.cross([0.0, 1.0, 0.0], z)
                if np.linalg.norm(x) < 1e-6:
                    x = np.cross([1.0, 0.0, 0.0], z)
                x /= np.linalg.norm(x)
                pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
            if "position" in spec:
                pose[:3, 3] = spec["position"]
            if kind == "spot":
                node.light.outerConeAngle = float(spec.get("outer_cone", 0.6))
                node.light.innerConeAngle = 0.5 * node.light.outerConeAngle
            node.matrix = pose
            self.scene.add_node(node)
            self._active_lights.append(node)


class SampleRenderer:
    """Renders samples of one dataset by global index. Create once per process; call :meth:`close` at the end."""

    def __init__(self, config: RenderConfig, mesh=None):
        import pyrender
        import trimesh

        from pose_core.mesh import load_mesh

        self.cfg = config
        self.axes = mode_axes(config.mode)
        self.ranges = config.ranges
        if mesh is None:
            mesh = load_mesh(config.mesh_path, config.mesh_scale)
        self.mesh_mm = mesh
        self.sampler = ParamSampler(config, mesh)
        self.diameter_mm = self.sampler.diameter_mm
        self.K = config.K()
        size = config.image_size

        m = mesh.copy()
        m.apply_scale(MM)
        self.scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.3, 0.3, 0.3])
        # own appearance (vertex colours / texture of the file)
        own = pyrender.Mesh.from_trimesh(m, smooth=not _is_textured(m))
        self.own_node = self.scene.add(own)
        # random appearance: same geometry with generated UVs, material replaced per sample
        self._rand_prim = random_material_primitive(m)
        self.rand_node = self.scene.add(pyrender.Mesh([self._rand_prim]))
        self.lights = LightRig(self.scene)
        # distractors: one node per (slot, shape), hidden unless used
        self.distractor_nodes = []
        if config.distractors:
            shapes = {
                "box": trimesh.creation.box(extents=(1.0, 1.0, 1.0)),
                "sphere": trimesh.creation.icosphere(subdivisions=2, radius=0.5),
                "cylinder": trimesh.creation.cylinder(radius=0.5, height=1.0, sections=20),
                "capsule": trimesh.creation.capsule(radius=0.3, height=0.4, count=[12, 12]),
            }
            for _ in range(MAX_DISTRACTORS):
                slot = {}
                for name, sh in shapes.items():
                    prim = random_material_primitive(sh)
                    node = self.scene.add(pyrender.Mesh([prim]))
                    node.mesh.is_visible = False
                    slot[name] = (node, prim)
                self.distractor_nodes.append(slot)
        add_opencv_camera(self.scene, self.K)
        _set_msaa(config.msaa)
        self.renderer = offscreen_renderer(size, size, config.fast_shader)
        cull = can_cull_back_faces(m)
        self.back_face_culling = cull
        extra = 0 if cull else pyrender.RenderFlags.SKIP_CULL_FACES
        self._flags_color = pyrender.RenderFlags.RGBA | extra
        self._flags_depth = pyrender.RenderFlags.DEPTH_ONLY | extra
        self._single_sample_fb = None  # MSAA only: see _centre_depth_of_object

    def sample_params(self, index: int) -> dict:
        return self.sampler.sample_params(index)

    # ------------------------------------------------------------------------------------------ GL
    def render(self, params: dict) -> dict:
        """Renders ``params`` (from :meth:`sample_params`) -> the numpy sample dict of render/records.py plus
        ``full_mask`` (the unoccluded silhouette, bool). ``depth_mm`` [H, W] float64 is the z-depth in mm of the
        object's own surface at its visible pixels (not of an occluder), 0 elsewhere."""
        cfg = self.cfg
        self.scene.set_pose(self.own_node if params["appearance"] == "own" else self.rand_node,
                            pose_matrix(params["R"], params["t_mm"] * MM))
        own = params["appearance"] == "own"
        self.own_node.mesh.is_visible = own
        self.rand_node.mesh.is_visible = not own
        if not own:
            self._rand_prim.material = material(params["appearance"])
        self.lights.set(params["light"])
        for slot in self.distractor_nodes:
            for node, _ in slot.values():
                node.mesh.is_visible = False
        for slot, d in zip(self.distractor_nodes, params["distractors"]):
            node, prim = slot[d["shape"]]
            node.mesh.is_visible = True
            prim.material = material(d["appearance"])
            T = pose_matrix(d["R"], d["t_mm"] * MM) @ np.diag([*(d["scale_mm"] * MM), 1.0])
            self.scene.set_pose(node, T)

        color, depth = self.renderer.render(self.scene, flags=self._flags_color)
        # Silhouettes from the multisampled coverage (alpha >= 1/2: pixel area at least half covered); the resolved
        # depth holds one sample per pixel, so it only decides who is in front. Without MSAA (the default) there is
        # one sample per pixel, at its centre: alpha is 0 or 255 and the depth is exactly that of the mask pixels.
        if params["distractors"]:
            for slot in self.distractor_nodes:
                for node, _ in slot.values():
                    node.mesh.is_visible = False
            color_obj, depth_obj = self.renderer.render(self.scene, flags=self._flags_color)
            full = color_obj[..., 3] >= 128
            visible = full & ((depth >= depth_obj - 1e-4) | (depth_obj == 0))
        else:
            depth_obj = depth
            full = color[..., 3] >= 128
            visible = full
        # The object's own z-depth (mm) at its visible pixels, read at the pixel centres (object coordinates).
        if cfg.msaa:
            depth_obj = _fill_from_nearest(self._centre_depth_of_object(), visible)
        depth_mm = np.where(visible, depth_obj.astype(np.float64) * (1.0 / MM), 0.0)
        alpha = color[..., 3:4].astype(np.float32) * (1.0 / 255.0)
        img = color[..., :3].astype(np.float32) + params["background"].astype(np.float32) * (1.0 - alpha)
        if params["noise_rng_seed"] is not None:
            rng = rz.sample_rng(cfg.seed, params["index"], rz.STREAM_NOISE)
            img = rz.apply_noise(rng, img, self.ranges)
        else:
            img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        n_full = int(full.sum())
        return {
            "image": img,
            "mask": (visible * 255).astype(np.uint8),
            "depth_mm": depth_mm,
            "full_mask": full,
            "R": params["R"], "t_mm": params["t_mm"], "K": self.K,
            "bbox_xywh": bbox_from_mask(full),
            "visib_fract": float(visible.sum()) / n_full if n_full else 0.0,
            "obj_id": cfg.obj_id, "index": params["index"],
        }

    def _centre_depth_of_object(self):
        """MSAA only: the z-depth (metres) of the object alone, rendered into a framebuffer WITHOUT multisampling,
        so each pixel holds the depth at its centre (the MSAA-resolved depth is one sample at a sub-pixel offset:
        back-projected through the pixel centre it lands up to ~1% of the diameter off the surface). The
        distractors must be hidden (render() hides them before calling this)."""
        from OpenGL import GL

        r = self.renderer._renderer
        if self._single_sample_fb is None:  # r's own framebuffers exist: render() has drawn once
            size = self.cfg.image_size
            cb, db = GL.glGenRenderbuffers(2)
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, cb)
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_RGBA, size, size)
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, db)
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT24, size, size)
            fb = GL.glGenFramebuffers(1)
            GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, fb)
            GL.glFramebufferRenderbuffer(GL.GL_DRAW_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_RENDERBUFFER, cb)
            GL.glFramebufferRenderbuffer(GL.GL_DRAW_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER, db)
            GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, 0)
            self._single_sample_fb = fb
        # pyrender draws into r._main_fb_ms and blits it into r._main_fb for reading: draw into ours instead
        multisampled, r._main_fb_ms = r._main_fb_ms, self._single_sample_fb
        try:
            return self.renderer.render(self.scene, flags=self._flags_depth)
        finally:
            r._main_fb_ms = multisampled

    def render_index(self, index: int) -> dict:
        return self.render(self.sample_params(index))

    def encode_index(self, index: int) -> bytes:
        """Sample ``index`` as a serialized tf.train.Example (PNGs encoded here, in the worker)."""
        s = self.render_index(index)
        return encode_example(s, compress_level=self.cfg.png_compress_level)

    def close(self):
        if getattr(self, "renderer", None) is not None:
            self.renderer.delete()
            self.renderer = None


_ORIGINAL_MS_STORAGE = None
SHADER_DIR = Path(__file__).resolve().parent / "shaders"


def _fast_shader_cache():
    """pyrender's shader cache, with its mesh shaders replaced by render/shaders/mesh.vert and mesh.frag (same
    uniforms; Lambert + Blinn-Phong instead of the PBR BRDF, no per-vertex matrix inverse). Other programs (depth,
    segmentation) stay pyrender's."""
    from pyrender.shader_program import ShaderProgramCache

    class FastShaderCache(ShaderProgramCache):
        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            if vertex_shader == "mesh.vert" and fragment_shader == "mesh.frag":
                # absolute paths: os.path.join(shader_dir, abs) is abs; the cache key uses the base names
                vertex_shader, fragment_shader = str(SHADER_DIR / "mesh.vert"), str(SHADER_DIR / "mesh.frag")
            return super().get_program(vertex_shader, fragment_shader, geometry_shader, defines)

    return FastShaderCache()


def _set_msaa(enabled: bool):
    """pyrender always renders into a 4x multisampled framebuffer; on Mesa's llvmpipe (CPU) that costs ~4x the
    fragment work. Without MSAA its renderbuffers get 0 samples (plain storage): pixels are covered when their
    centre is inside a triangle (the OpenCV pixel-centre convention), edges are aliased."""
    import pyrender.renderer as pr

    global _ORIGINAL_MS_STORAGE
    if _ORIGINAL_MS_STORAGE is None:
        _ORIGINAL_MS_STORAGE = pr.glRenderbufferStorageMultisample
    if enabled:
        pr.glRenderbufferStorageMultisample = _ORIGINAL_MS_STORAGE
    else:
        pr.glRenderbufferStorageMultisample = (
            lambda target, samples, fmt, w, h: _ORIGINAL_MS_STORAGE(target, 0, fmt, w, h))


def _fill_from_nearest(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gives the ``mask`` pixels whose ``depth`` is 0 the depth of the nearest pixel that has one.

    With MSAA the mask is coverage >= 1/2 (2 of the 4 samples) while the depth is read at pixel centres: a few
    silhouette-edge pixels are in the mask with their centre just outside the object (up to ~0.4 px, the reach of
    the sample pattern). No point of the surface lies on such a pixel's centre ray; the nearest pixel's depth puts
    its ``xyz`` beside the silhouette, about a pixel's footprint from the surface at most."""
    missing = mask & (depth <= 0)
    if not missing.any():
        return depth
    has_depth = depth > 0
    if not has_depth.any():
        raise RuntimeError("the object has mask pixels but no pixel centre on it: no depth to fill from")
    from scipy.ndimage import distance_transform_edt

    _, (rows, cols) = distance_transform_edt(~has_depth, return_indices=True)
    out = depth.copy()
    out[missing] = depth[rows[missing], cols[missing]]
    return out


def _is_textured(mesh) -> bool:
    return getattr(mesh.visual, "kind", None) == "texture"


