"""Data pipeline: datasets, reference transforms, the global position stream and the loader.

No DeepSpeed or torch.distributed imports here: rank and world size are passed in.
"""

from ijepa_ds.data.fashion_mnist import FashionMNIST, read_idx
from ijepa_ds.data.image_folder import ImageFolder, load_image
from ijepa_ds.data.loader import (
    DATASET_KINDS,
    PositionDataset,
    build_dataset,
    build_dataset_from_config,
    build_train_loader,
    default_root,
    sample_seed,
)
from ijepa_ds.data.sampler import (
    GlobalPositionSampler,
    PositionMap,
    epoch_permutation,
    mix_seed,
)
from ijepa_ds.data.synthetic import SyntheticImages
from ijepa_ds.data.transforms import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
)

__all__ = [
    "DATASET_KINDS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FashionMNIST",
    "GlobalPositionSampler",
    "ImageFolder",
    "PositionDataset",
    "PositionMap",
    "SyntheticImages",
    "build_dataset",
    "build_dataset_from_config",
    "build_eval_transform",
    "build_train_loader",
    "build_train_transform",
    "default_root",
    "epoch_permutation",
    "load_image",
    "mix_seed",
    "read_idx",
    "sample_seed",
]
