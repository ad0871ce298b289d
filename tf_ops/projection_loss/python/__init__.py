"""Python side of the Projection Loss op: TF wrappers (ops/) and the ctypes harness of the core (harness.py)."""
