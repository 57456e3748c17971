"""Install dinov2_cell; `patches/` becomes the subpackage `dinov2_cell.patches`, `configs/` the folder
`dinov2_cell/configs`.

Compatible ranges only: exact tested pins live in requirements.txt (used by `make install`). Upstream DINOv2
must be installed separately with `pip install --no-deps dinov2==0.0.1.dev2`.
"""

from setuptools import find_packages, setup

setup(
    name="dinov2_cell",
    version="0.1.0",
    description="Local-aggregation DINOv2 for Cell Painting profiling (CPJUMP1), as a plugin of upstream DINOv2",
    python_requires=">=3.10",
    # Every package under dinov2_cell/, plus two top-level folders installed inside it: patches/ as
    # dinov2_cell.patches and the YAML configs in configs/ as dinov2_cell/configs (addressable by name).
    packages=find_packages(include=["dinov2_cell", "dinov2_cell.*"]) + ["dinov2_cell.patches", "dinov2_cell.configs"],
    package_dir={"dinov2_cell.patches": "patches", "dinov2_cell.configs": "configs"},
    package_data={"dinov2_cell": ["data/cpjump1/*"], "dinov2_cell.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.26",
        "omegaconf>=2.3",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "submitit>=1.5",
        "tifffile>=2023.7",
        "imagecodecs>=2023.1",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "pandas>=2.0",
        "pyarrow>=14",
        "copairs>=0.5",
        "cp-measure>=0.3,<0.4",
        "pycytominer>=1.2",
        "scikit-image>=0.25",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "Pillow>=9",
    ],
    # `dinov2-cell COMMAND ...` = `python -m MODULE ...` for every command-line module (dinov2_cell/console.py)
    entry_points={"console_scripts": ["dinov2-cell=dinov2_cell.console:main"]},
    extras_require={
        "xformers": ["xformers"],
        "fast": ["numba>=0.60"],  # one compiled pass for site normalisation (dinov2_cell.data.fused)
        "test": ["pytest>=8"],
        "tensorboard": ["tensorboard"],  # monitoring.tensorboard: scalars beside training_metrics.json
    },
)
