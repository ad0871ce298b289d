"""Python side of the RANSAC-PnP op: TF wrapper (ops/) and the ctypes harness of the core (harness.py)."""
