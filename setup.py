"""matta: elastic recommender-ranking models with the MatTA recipe on TFX.

Ranges here stay loose for users on normal hosts; `requirements.lock` pins every
transitive package for this project's own CI and `make setup`.
"""
from setuptools import find_packages, setup

CORE = [
    "tensorflow>=2.21,<2.22",
    "tf-keras>=2.21,<2.22",
    "tensorflow-recommenders>=0.7.7",
    "apache-beam>=2.60",
    "pyarrow>=14",
    "numpy>=1.26",
    "scipy>=1.11",
    "pyyaml>=6",
    "grpcio>=1.60",
    "protobuf>=6",
    "tensorflow-serving-api>=2.19",
]
# kfp: TFX's Vertex / Kubeflow V2 compiler; tensorboard: the Trainer's training logs.
TFX = ["tfx>=1.21,<1.22", "kfp>=2.13", "tensorboard>=2.19"]
PLOTS = ["matplotlib>=3.8"]
DEV = ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3", "ruff>=0.6"]

setup(
    name="matta",
    version="0.1.0",
    description="Matryoshka Teaching-Assistant (MatTA) training of elastic ranking students "
    "on TFX, served with TensorFlow Serving",
    python_requires=">=3.10",
    packages=find_packages(include=["matta_tf*", "components*", "pipelines*", "serving*", "bench*"]),
    package_data={"matta_tf": ["configs/*.yaml"], "pipelines": ["configs/*.yaml"]},
    install_requires=CORE,
    extras_require={"tfx": TFX, "plots": PLOTS, "all": TFX + PLOTS, "dev": DEV},
    entry_points={"console_scripts": ["matta=matta_tf.cli:main"]},
)
