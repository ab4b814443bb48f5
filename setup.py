from setuptools import find_packages, setup

setup(
    name="clipseg-drywall",
    version="0.1.0",
    description="Text-prompted drywall QA segmentation (cracks, taping areas) by fine-tuning CLIPSeg",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["clipseg_drywall", "clipseg_drywall.*", "data_builders", "data_builders.*"]),
    include_package_data=True,
    package_data={"clipseg_drywall": ["templates/*.md"]},
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0",
        "datasets>=4.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors",
        "pillow>=10",
        "lxml",
        "numpy",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest>=8"]},
)
