"""ijepa-ds: a DeepSpeed-based trainer for I-JEPA."""

from setuptools import find_packages, setup

setup(
    name="ijepa-ds",
    version="0.1.0",
    description="I-JEPA self-supervised pretraining on DeepSpeed ZeRO, faithful to the paper",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # ds_configs/ stays at the repository root (the one copy to edit); wheels and sdists carry
    # it as ijepa_ds/ds_configs/, where ijepa_ds.backend.ds_config looks outside a checkout.
    packages=[*find_packages(include=["ijepa_ds", "ijepa_ds.*"]), "ijepa_ds.ds_configs"],
    package_dir={"ijepa_ds.ds_configs": "ds_configs"},
    package_data={"ijepa_ds.config.presets": ["*.yaml"], "ijepa_ds.ds_configs": ["*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "deepspeed>=0.19.8,<0.19.9",  # the range backend.guard.TESTED checks at start-up
        "numpy",
        "pyyaml",
        "tensorboard",
        "submitit",
        "safetensors",
        "psutil",
        "pillow",
    ],
    extras_require={
        # wheel: tests/test_packaging.py builds a wheel (setuptools < 70.1 lacks bdist_wheel).
        # fairscale, wandb: the tests of model.act_ckpt_impl=fairscale and logging.wandb run
        # in CI too.
        "test": [
            "pytest>=8",
            "hypothesis",
            "timm",
            "wheel",
            "fairscale>=0.4.13,<0.5",
            "wandb>=0.17",
        ],
        "dev": ["pytest>=8", "hypothesis", "timm", "ruff"],
        "fairscale": ["fairscale>=0.4.13,<0.5"],  # model.act_ckpt_impl=fairscale
        "wandb": ["wandb>=0.17"],  # logging.wandb=true
    },
    entry_points={"console_scripts": ["ijepa-ds=ijepa_ds.cli.main:main"]},
)
