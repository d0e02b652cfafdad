"""int8 CPU inference: linear layers with int8 weights, run by PyTorch's fbgemm dynamic-quantized kernel.

Weights are quantized once, symmetrically per output channel (scale = max |w| / 127); activations are
quantized per call (dynamic quantization), accumulation is int32 and the result fp32. `transformers`'
GPT-2 keeps its projections in `Conv1D` (weight laid out in x out), which `quantize_dynamic` does not
touch, so the fast engine (chitchat.generate.FastGPT2) builds its layers from `Int8Linear` directly,
the tied output layer included.
"""

from __future__ import annotations

import warnings

import torch

from chitchat.errors import ChitchatError


def check_int8(device) -> None:
    if torch.device(device).type != "cpu":
        raise ChitchatError(f"--int8 runs on the CPU only (device {device})")
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm")):
        raise ChitchatError(f"--int8 needs PyTorch's x86/fbgemm quantized engine (this build has {', '.join(engines)})")


class Int8Linear:
    """`x @ weight + bias` for a weight given as (in, out) (Conv1D layout) or (out, in) with `out_in=True`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, out_in: bool = False):
        w = (weight if out_in else weight.t()).detach().float().contiguous()
        scales = (w.abs().amax(dim=1).clamp_min(1e-8) / 127.0).double()
        zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor creation is marked deprecated; the kernels are not
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())
        self.out_features = w.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, as fbgemm needs on CPUs without VNNI to avoid saturation
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


class Fp32Linear:
    """`x @ weight + bias` with the weight kept (in, out) and contiguous: one addmm per call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, out_in: bool = False):
        self.weight = (weight.t() if out_in else weight).detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.out_features = self.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)
