"""The Projection Loss op: framework-free C++/CUDA core (core/), TF op (cc/), Python wrappers (python/)."""
