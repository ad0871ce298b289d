"""The RANSAC-PnP op: framework-free C++ core (core/), TF op (cc/), Python wrapper and ctypes harness (python/).

``ransac_pnp`` (inference) and ``ransac_pnp_hypotheses`` (the DSAC training form, differentiable) are loaded lazily
on first access, as in ``tf_ops``, so that the ctypes harness (``tf_ops.ransac_pnp.python.harness``) imports without
TensorFlow. (``tf_ops.ransac_pnp`` itself resolves to the *function*; this package is reached by importing from it,
e.g. ``from tf_ops.ransac_pnp import ransac_pnp_hypotheses``.)
"""

__all__ = ["ransac_pnp", "ransac_pnp_hypotheses"]


def __getattr__(name: str):
    if name in __all__:
        # Raises a clear ImportError ("run `make build-ops`") when the op library is missing.
        from tf_ops.ransac_pnp.python.ops import ransac_pnp_ops

        return getattr(ransac_pnp_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
