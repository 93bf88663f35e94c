"""Shared by the interop tests: tiny models, a consolidated dict after a real AdamW step, the
reference's own model layout, damaged and code-running checkpoint files, bit-equality."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ijepa_ds.backend.param_groups import build_param_groups
from ijepa_ds.interop.consolidated import make_consolidated
from ijepa_ds.models import VisionTransformer, VisionTransformerPredictor, build_predictor

ENC_KW = dict(
    img_size=16,
    patch_size=4,
    in_chans=3,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    norm_eps=1e-6,
)
PRED_KW = dict(
    grid_size=(4, 4),
    embed_dim=32,
    predictor_embed_dim=16,
    depth=1,
    num_heads=2,
    mlp_ratio=4.0,
    qkv_bias=True,
    norm_eps=1e-6,
)


def encoder_kwargs(**changes) -> dict:
    """`ENC_KW` with `changes` applied."""
    return {**ENC_KW, **changes}


def predictor_kwargs_for(enc_kw: dict) -> dict:
    """`PRED_KW` fitted to an encoder: its grid (`img_size` an (H, W) pair), width and eps."""
    height, width = enc_kw["img_size"]
    grid = (height // enc_kw["patch_size"], width // enc_kw["patch_size"])
    return {
        **PRED_KW,
        "grid_size": grid,
        "embed_dim": enc_kw["embed_dim"],
        "norm_eps": enc_kw["norm_eps"],
    }


def tiny_encoder(**changes) -> VisionTransformer:
    """A `VisionTransformer(**encoder_kwargs(**changes))`."""
    return VisionTransformer(**encoder_kwargs(**changes))


def tiny_models(
    enc_kw: dict = ENC_KW, pred_kw: dict = PRED_KW, seed: int = 0
) -> tuple[VisionTransformer, VisionTransformerPredictor]:
    """(encoder, predictor) freshly initialised under `seed`."""
    torch.manual_seed(seed)
    return VisionTransformer(**enc_kw), VisionTransformerPredictor(**pred_kw)


def native_consolidated() -> dict:
    """Small models after one real AdamW step in the 4 reference groups, as a consolidated dict."""
    encoder, predictor = tiny_models()
    target = copy.deepcopy(encoder)
    opt = torch.optim.AdamW(build_param_groups(encoder, predictor), lr=1e-3, weight_decay=0.04)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p)
    opt.step()
    names = {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}
    names.update({id(p): f"predictor.{n}" for n, p in predictor.named_parameters()})
    optimizer = {
        "param_groups": [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [names[id(p)] for p in g["params"]],
            }
            for g in opt.param_groups
        ],
        "state": {names[id(p)]: dict(s) for p, s in opt.state.items()},
    }
    return make_consolidated(
        {k: v.detach() for k, v in encoder.state_dict().items()},
        {k: v.detach() for k, v in predictor.state_dict().items()},
        {k: v.detach() for k, v in target.state_dict().items()},
        ENC_KW,
        PRED_KW,
        config={"model": {"name": "vit_tiny", "crop_scale": [0.3, 1.0]}},
        step=1,
        epoch=0,
        optimizer=optimizer,
        metadata={"loss": 0.5, "world_size": 2},
    )


def reference_models(
    model: dict,
) -> tuple[VisionTransformer, VisionTransformerPredictor, VisionTransformer]:
    """(encoder, predictor, target encoder) as the reference builds them from the fixture's
    `expected["model"]` numbers (the predictor takes the encoder's head count)."""

    def encoder() -> VisionTransformer:
        return VisionTransformer(
            img_size=model["img_size"],
            patch_size=model["patch_size"],
            embed_dim=model["embed_dim"],
            depth=model["depth"],
            num_heads=model["num_heads"],
            mlp_ratio=model["mlp_ratio"],
            qkv_bias=model["qkv_bias"],
            norm_eps=model["norm_eps"],
        )

    student = encoder()
    predictor = build_predictor(
        student,
        predictor_embed_dim=model["pred_embed_dim"],
        depth=model["pred_depth"],
        mlp_ratio=model["mlp_ratio"],
        qkv_bias=model["qkv_bias"],
        norm_eps=model["norm_eps"],
    )
    return student, predictor, encoder()


def assert_same(a, b, path="") -> None:
    """Recursive equality; tensors bit-equal with the same dtype and shape."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def write_truncated(source: Path, dest: Path | None = None) -> Path:
    """The first half of `source`'s bytes written to `dest` (default: over `source`)."""
    data = source.read_bytes()
    dest = source if dest is None else dest
    dest.write_bytes(data[: len(data) // 2])
    return dest


class CodeRunningPickle:
    """Unpickling this creates `marker`: a loader must refuse the file before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
