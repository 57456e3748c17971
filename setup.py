"""Install dinov2_cell; `patches/` becomes the subpackage `dinov2_cell.patches`.

Compatible ranges only: exact tested pins live in requirements.txt (used by `make install`). Upstream DINOv2
must be installed separately with `pip install --no-deps dinov2==0.0.1.dev2`.
"""

from setuptools import setup

setup(
    name="dinov2_cell",
    version="0.1.0",
    description="Local-aggregation DINOv2 for Cell Painting profiling (CPJUMP1), as a plugin of upstream DINOv2",
    python_requires=">=3.10",
    packages=[
        "dinov2_cell",
        "dinov2_cell.patches",
        "dinov2_cell.data",
        "dinov2_cell.synthetic",
        "dinov2_cell.augment",
        "dinov2_cell.models",
        "dinov2_cell.train",
        "dinov2_cell.run",
        "dinov2_cell.eval",
        "dinov2_cell.profiles",
    ],
    package_dir={"dinov2_cell.patches": "patches"},
    package_data={"dinov2_cell": ["configs/*.yaml", "data/cpjump1/*"]},
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
    extras_require={"xformers": ["xformers"], "test": ["pytest>=8"]},
)
