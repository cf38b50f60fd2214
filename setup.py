"""Distribution scipion-em-fewshotpicker: the engine (fewshotpicker) and the Scipion plugin."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "fewshotpicker" / "__init__.py").read_text()).group(1)

ENGINE = [
    "numpy>=1.24",
    "scipy>=1.10",
    "scikit-learn>=1.3",
    "torch>=2.1",
    "timm>=0.9",
    "mrcfile>=1.4",
    "starfile>=0.5",
    "pandas>=1.5",
    "matplotlib>=3.6",
    "tqdm>=4.60",
]
SCIPION = [
    "scipion-pyworkflow>=3.5",
    "scipion-em>=3.5",
    "scipion-em-tomo>=3.5",
    "pyarrow<26",  # pyarrow>=26 refuses the numpy that pyworkflow pins
]

setup(
    name="scipion-em-fewshotpicker",
    version=VERSION,
    description="Few-shot cryo-EM particle picking (CryoMAE-style) as a Scipion plugin",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="GPLv3",
    python_requires=">=3.9,<3.13",
    packages=find_packages(exclude=["build", "dist"]),
    package_data={"scipion_fewshotpicker": ["protocols.conf"]},
    install_requires=ENGINE,
    extras_require={
        "scipion": SCIPION,
        # scipion-em-relion: STAR coordinate import/export in the Scipion project tests;
        # setuptools: the installb test builds this checkout's wheel offline
        "test": SCIPION + ["scipion-em-relion>=4", "pytest>=7", "setuptools>=64"],
    },
    entry_points={
        "console_scripts": ["fewshotpicker = fewshotpicker.cli.main:main"],
        "pyworkflow.plugin": ["scipion_fewshotpicker = scipion_fewshotpicker"],
    },
)
