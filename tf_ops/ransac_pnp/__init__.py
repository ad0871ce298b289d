"""The RANSAC-PnP op: framework-free C++ core (core/), TF op (cc/), Python wrapper and ctypes harness (python/)."""
