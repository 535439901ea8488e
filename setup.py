from setuptools import find_packages, setup


def _requirements():
    with open("requirements.txt") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="vdot-jax",
    version="0.1.0",
    description="VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX/Flax.",
    packages=find_packages(include=["vdot_jax", "vdot_jax.*"]),
    package_data={"vdot_jax": ["assets/toy_teacher/*"]},  # the demo's shipped teacher (diffusers format, ~2 MB)
    python_requires=">=3.11",
    install_requires=_requirements(),
    extras_require={
        # PyTorch oracles for the parity tests (and `.pt/.pth` reading in `vdot convert`).
        # torch is pinned: a bare `torch` pulls a multi-GB CUDA build.
        "test": [
            "torch==2.13.0",
            "diffusers==0.42.1",
            "transformers>=4.57",
            "tokenizers>=0.21",
            "sentencepiece>=0.2",
            "accelerate>=1.0",
            "peft>=0.17",  # diffusers' load_lora_weights (LoRA export tests)
            "ftfy>=6.0",
            "scipy>=1.11",
            "opencv-python-headless==4.10.0.84",  # the release's drawing and mask growth (tests/test_prepare.py)
            # DWPose on designed ONNX networks (tests/test_annotators.py): CPU wheels, ~22 s into a fresh venv
            "onnxruntime==1.32.0",
            "onnx==1.23.2",
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.3",  # a hung test fails with every thread's stack instead of stalling CI (pytest.ini)
            "libtpu==0.0.42.*",  # TPU compile tests (tests/test_tpu.py) on a CPU host
        ],
        "torch": ["torch==2.13.0"],
        # `vdot prepare depth|flow|pose|scribble`, --track-model (SAM 2), --detect-model (Grounding DINO),
        # --salient-model / --ref-salient-model (U^2-Net), --ref-face-model (SCRFD's ONNX) and `vdot precompute
        # --annotate` (conditions/annotators): the networks come from these packages (scribble's and U^2-Net's are
        # written in torch, so their release files load as they are), their weights by path (nothing is downloaded).
        # insightface (the release's face package) is not listed: its wheel requires opencv-python 5, which replaces
        # the cv2 module of the pinned headless OpenCV; its SCRFD detector runs on onnxruntime instead. flow also needs torchvision 0.28.0 built
        # for YOUR torch, so it is not listed: PyPI's wheels are CUDA builds, which beside the CPU torch fail to load
        # and then break transformers too (measured: DepthAnything no longer loads). CPU torch: pip install
        # torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu
        "annotators": ["torch==2.13.0", "transformers>=4.57", "opencv-python-headless==4.10.0.84",
                       "onnxruntime==1.32.0"],
        # `vdot plan` for TPU topologies on any host (and running on TPU VMs); matches jax 0.10.2
        "tpu": ["libtpu==0.0.42.*"],
        "gcs": ["gcsfs>=2024.2"],
        # `vdot ui` (the web page); gradio_client drives it in tests/test_ui.py, selenium drives Debian's chromium
        "ui": ["gradio>=6.31,<7", "gradio_client>=2.7,<3", "selenium>=4.30,<5"],  # gs:// training workdirs (etils.epath reads and writes them through fsspec)
    },
    entry_points={"console_scripts": ["vdot=vdot_jax.cli:main"]},
)
