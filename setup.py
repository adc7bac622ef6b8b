"""longjax: context-window extension for LLaMA-family models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="longjax",
    version="0.1.0",
    description="A pure-functional JAX/Flax LLaMA for extending context windows: RoPE scaling, "
    "long-context attention, MEGALODON blocks, sharded training and long-context evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["longjax", "longjax.*"]),
    package_data={"longjax.evaluate": ["data/*.txt", "data/*.jsonl", "data/*.md", "data/LICENSE.*"]},
    python_requires=">=3.11",
    # Lower bounds are the versions this code was tested with.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "sentencepiece>=0.2.3",
        "tokenizers>=0.23",
        "gguf>=0.19",
        "numpy>=2.4",
        "safetensors>=0.8.0",
        "tqdm>=4.70",
        "tensorboardX>=2.6.5",
        "matplotlib>=3.11",
    ],
    extras_require={
        "test": ["pytest>=9.2", "pytest-xdist>=3.8", "filelock>=3.20", "torch==2.13.0", "transformers>=5.23",
                 "accelerate>=1.16",  # transformers needs it to load a GGUF (the import tests compare with it)
                 # a gs:// workdir against a local GCS emulator (tests/train/test_gcs_workdir.py)
                 "gcp-storage-emulator>=2026.7.19", "gcsfs>=2026.10.1"],
        "mutate": ["mutmut==3.8.1"],  # `make mutate`: tests/mutate.py sets mutmut's configuration for each file
        "tpu": ["jax[tpu]>=0.10.2"],
        "cuda": ["jax[cuda13]>=0.10.2"],
    },
)
