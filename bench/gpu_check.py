"""GPU correctness and speed check on one CUDA device (run by ``bench/gpu_check.sh``).

Under ``torchrun --nproc_per_node 1``. Checks, each recorded with its figure:
1. bf16 vs fp32: loss and gradient norm of one ViT-B/16 I-JEPA step from identical weights,
   batch and masks (tolerance below; bf16 has an 8-bit mantissa, so ~1e-2 relative is normal);
2. the attention kernel: SDPA restricted to the flash and memory-efficient backends runs on the
   model's bf16 shapes, and the profiled student forward launches one of those kernels;
3. a 1-GPU NCCL group starts, then ``vit_h14_in1k`` trains under ZeRO-3 with activation
   checkpointing through the real ``run_training``: img/s, MFU against the bf16 dense peak,
   and peak CUDA memory against ``ijepa-ds plan``.
Writes ``bench/results/gpu_check.md``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ijepa_ds.config import load_config, validate_config  # noqa: E402
from ijepa_ds.masks import MaskCollator, build_mask_sampler_from_config  # noqa: E402
from ijepa_ds.perf.flops import mfu  # noqa: E402
from ijepa_ds.perf.memory import GIB  # noqa: E402
from ijepa_ds.perf.plan import plan  # noqa: E402
from ijepa_ds.train.step import compute_loss  # noqa: E402
from ijepa_ds.train.target import TargetEncoder  # noqa: E402
from ijepa_ds.train.trainer import build_student  # noqa: E402

LOSS_RTOL, GRAD_RTOL = 2e-2, 5e-2
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
H14_BATCH, H14_STEPS = 32, 20
SYNTH = ["data.dataset=synthetic", "data.synthetic_size=1024", "data.num_workers=2"]


def _batch(cfg, n: int, device):
    torch.manual_seed(0)
    imgs = torch.randn(n, 3, cfg.data.crop_size, cfg.data.crop_size)
    collate = MaskCollator(build_mask_sampler_from_config(cfg, n))
    _, _, _, masks_enc, masks_pred = collate([(img, 0, i) for i, img in enumerate(imgs)])
    return imgs.to(device), [m.to(device) for m in masks_enc], [m.to(device) for m in masks_pred]


class _Plain:
    """The student as the engine would call it, without DeepSpeed (for the precision check)."""

    def __init__(self, student):
        self.student = student

    def __call__(self, imgs, masks_enc, masks_pred):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=imgs.dtype == torch.bfloat16):
            return self.student(imgs.float(), masks_enc, masks_pred)


def precision_check(device) -> dict:
    cfg = load_config("vit_b16_in1k", SYNTH)
    imgs, masks_enc, masks_pred = _batch(cfg, 8, device)
    out = {}
    for precision in ("fp32", "bf16"):
        student = build_student(cfg).to(device)
        target = TargetEncoder(student.encoder, partitioned=False)
        loss, _ = compute_loss(
            _Plain(student), target, imgs, masks_enc, masks_pred, "smooth_l1", precision
        )
        loss.backward()
        grads = [p.grad.float().norm() for p in student.parameters() if p.grad is not None]
        out[precision] = {"loss": loss.item(), "grad_norm": torch.stack(grads).norm().item()}
    rel = {k: abs(out["bf16"][k] - out["fp32"][k]) / abs(out["fp32"][k]) for k in out["fp32"]}
    out["rel"] = rel
    out["ok"] = rel["loss"] <= LOSS_RTOL and rel["grad_norm"] <= GRAD_RTOL
    return out


def attention_check(device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q = torch.randn(8, 16, 256, 80, device=device, dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        sdpa(q, q, q)  # raises if neither fast kernel accepts the ViT-H head shape
    cfg = load_config("vit_h14_in1k", SYNTH)
    student = build_student(cfg).to(device).to(torch.bfloat16)
    imgs, masks_enc, masks_pred = _batch(cfg, 4, device)
    with (
        torch.no_grad(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
    ):
        student(imgs.to(torch.bfloat16), masks_enc, masks_pred)
    names = {e.key for e in prof.key_averages()}
    fast = sorted(n for n in names if any(k in n.lower() for k in ("flash", "fmha", "efficient")))
    return {"restricted_sdpa_ran": True, "fast_kernels": fast[:4], "ok": bool(fast)}


def vit_h_check(run_root: str) -> dict:
    from ijepa_ds.train.args import TrainArgs
    from ijepa_ds.train.main import run_training

    overrides = [
        *SYNTH, f"data.batch_size={H14_BATCH}", f"data.global_batch_size={H14_BATCH}",
        "deepspeed.config=zero3", "model.act_ckpt_encoder=1", "model.act_ckpt_predictor=1",
        f"schedule.max_steps={H14_STEPS}", "checkpoint.save_at_end=false", "logging.log_every=5",
        f"logging.output_dir={run_root}", "logging.run_name=h14",
    ]  # fmt: skip
    started = time.perf_counter()
    result = run_training(TrainArgs("vit_h14_in1k", tuple(overrides)))
    rows = [json.loads(line) for line in open(Path(result["run_dir"]) / "metrics.jsonl")]
    last = [r for r in rows if "perf/img_per_s" in r][-1]
    cfg = load_config("vit_h14_in1k", overrides)
    validate_config(cfg, world_size=1)
    planned = plan(cfg, 1, torch.cuda.get_device_properties(0).total_memory / GIB)
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    flops = planned.flops.hardware
    measured = max(r.get("memory/max_allocated_mib", 0.0) for r in rows) * 2**20
    return {
        "wall_s": time.perf_counter() - started,
        "img_per_s": last["perf/img_per_s"],
        "mfu": mfu(last["perf/img_per_s"], flops, peak) if peak else None,
        "peak_cuda_gib": measured / GIB,
        "planned_peak_gib": planned.estimate.peak / GIB,
        "plan_error": planned.estimate.peak / measured - 1.0,
    }


def report(device_name: str, checks: dict) -> str:
    p, a, h = checks["precision"], checks["attention"], checks["vit_h"]
    lines = [
        "# GPU check (`bash bench/gpu_check.sh`)", "", f"Device: {device_name}; torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}.", "",
        "| check | figure | verdict |", "|---|---|---|",
        "| 1-GPU NCCL group | started, ViT-H trained in it | ok |",
        f"| bf16 vs fp32 loss (ViT-B/16) | {p['fp32']['loss']:.5f} vs {p['bf16']['loss']:.5f}, "
        f"rel {p['rel']['loss']:.2e} (tol {LOSS_RTOL}) | {'ok' if p['ok'] else 'FAIL'} |",
        f"| bf16 vs fp32 grad norm | {p['fp32']['grad_norm']:.4f} vs {p['bf16']['grad_norm']:.4f}"
        f", rel {p['rel']['grad_norm']:.2e} (tol {GRAD_RTOL}) | {'ok' if p['ok'] else 'FAIL'} |",
        f"| fast SDPA kernel | {', '.join(a['fast_kernels']) or 'none'} | "
        f"{'ok' if a['ok'] else 'FAIL'} |",
        f"| ViT-H/14 ZeRO-3 + act ckpt, batch {H14_BATCH} | {h['img_per_s']:.1f} img/s, MFU "
        f"{'n/a' if h['mfu'] is None else format(h['mfu'], '.1%')} | measured |",
        f"| peak CUDA memory vs plan | {h['peak_cuda_gib']:.2f} GiB measured, "
        f"{h['planned_peak_gib']:.2f} GiB planned ({h['plan_error']:+.1%}) | measured |",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible")
    device = torch.device("cuda", 0)
    checks = {"precision": precision_check(device), "attention": attention_check(device)}
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as root:
        checks["vit_h"] = vit_h_check(root)
    from ijepa_ds.backend.comm import shutdown_distributed

    shutdown_distributed()
    text = report(torch.cuda.get_device_name(0), checks)
    (REPO / "bench" / "results" / "gpu_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
