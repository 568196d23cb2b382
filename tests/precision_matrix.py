"""The precision matrix: every objective x {fp32, bf16, fp16 with loss scale 2^16} x {plain, fused}, each
against float64 on the *same rounded inputs* (hidden states and head weight rounded to the dtype, then
the whole computation repeated in float64). `python tests/precision_matrix.py` prints the error table.

Errors: loss |L - L64| / |L64|; gradients max|g - g64| / max|g64| for the hidden states and the head
weight. fp16 runs as mixed-precision training does: backward of `loss * 2^16`, gradients unscaled in
float32 afterwards.
"""

from __future__ import annotations

import torch

from emotune.objectives import CostEmbedding, build_objective
from emotune.objectives.fused import fused_loss

OBJECTIVES = [
    ("mle", {}),
    ("tailr", {}),
    ("mixce", {}),
    ("emo1", {}),
    ("emo2", {}),
    ("demd", {}),
    ("emo1", {"weighting": "batch"}),
]
DTYPES = {"fp32": (torch.float32, 1.0), "bf16": (torch.bfloat16, 1.0), "fp16": (torch.float16, 2.0 ** 16)}
# Per dtype: the loss's and the gradients' allowed relative error. The logits themselves are rounded to the
# dtype by the head's matmul (unit roundoff u: fp32 6e-8, bf16 3.9e-3, fp16 4.9e-4), so with |z| ~ 4 a
# probability moves by ~u |z| and a gradient entry (a sum over tokens, with cancellation) by a few times that.
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
TOLERANCE = {"fp32": (1e-6, 2e-5), "bf16": (2e-3, 6e-2), "fp16": (2e-4, 6e-3)}


def name_of(name: str, params: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def problem(seed: int = 0, B: int = 2, T: int = 33, H: int = 64, V: int = 512, H_cost: int = 32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * (2.0 / H ** 0.5)  # logits ~ N(0, 4)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :5] = -100
    labels[1, -3:] = -100
    hidden[1, 3] *= 6.0  # one confident token: the regime of the CE and DEMD cancellation defects
    labels[1, 4] = int((hidden[1, 3] @ weight.T).argmax())
    E = torch.randn(V, H_cost, generator=g, dtype=torch.float64)
    return hidden, weight, labels, E


def _run(path: str, objective, hidden, weight, labels, scale: float):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    if path == "plain":
        out = objective(hidden @ weight.T, labels)
    else:
        out = fused_loss(hidden, weight, labels, objective, chunk_size=16)
    grads = torch.autograd.grad(out.loss * scale, (hidden, weight))
    return out.loss.detach().double(), [g.double() / scale for g in grads]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def errors(name: str, params: dict, dtype_name: str, seed: int = 0) -> dict:
    """{path: (loss error, grad_hidden error, grad_weight error, finite)} for one objective and dtype."""
    dtype, scale = DTYPES[dtype_name]
    hidden, weight, labels, E = problem(seed)
    h_d, w_d = hidden.to(dtype), weight.to(dtype)
    ref_obj = build_objective(name, params, CostEmbedding(E) if name != "mle" and name not in ("tailr", "mixce") else None)
    ref_loss, ref_grads = _run("plain", ref_obj, h_d.double(), w_d.double(), labels, 1.0)
    cost = CostEmbedding(E.float()) if ref_obj.needs_cost else None
    objective = build_objective(name, params, cost)
    out = {}
    for path in ("plain", "fused"):
        loss, grads = _run(path, objective, h_d, w_d, labels, scale)
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        out[path] = (float((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-30)),
                     _rel(grads[0], ref_grads[0]), _rel(grads[1], ref_grads[1]), finite)
    return out


def table() -> str:
    lines = [f"{'objective':<22} {'dtype':<5} {'path':<6} {'loss':>9} {'grad_h':>9} {'grad_W':>9}"]
    for name, params in OBJECTIVES:
        for dtype_name in DTYPES:
            errs = errors(name, params, dtype_name)
            for path, (l, gh, gw, finite) in errs.items():
                flag = "" if finite else "  NON-FINITE"
                lines.append(f"{name_of(name, params):<22} {dtype_name:<5} {path:<6} {l:9.2e} {gh:9.2e} {gw:9.2e}{flag}")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(table())
