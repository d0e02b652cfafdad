"""int8 CPU inference: linear layers with int8 weights, run by PyTorch's fbgemm kernels.

Weights are quantized once, symmetrically per output channel; activations are quantized per call
(dynamic quantization), accumulation is int32 and the result fp32. `transformers`' GPT-2 keeps its
projections in `Conv1D` (weight laid out in x out), which `quantize_dynamic` does not touch, so the
fast engine (chitchat.engine.fast.FastGPT2) builds its layers from `Int8Linear` directly, the tied
output layer included.

The kernel: `torch.fbgemm_linear_int8_weight_fp32_activation` (the fbgemm entry point that
`quantize_dynamic` used before packed-parameter objects) where this PyTorch has it, else
`quantized::linear_dynamic`. Both run the same fbgemm GEMM, but the second takes its weights as a
TorchScript object, and every call from Python looks up `__torch_function__` on it, which raises and
catches a C++ exception: an overhead per call as large as the work of a decode step's small linear
layers. The first takes plain tensors and per-tensor weight parameters: per-channel
scales are applied as a multiplication of the output (the bias is passed divided by them), and
weights are quantized to 7 bits (|q| <= 63) because it quantizes activations to 8 bits: on CPUs
without VNNI, fbgemm adds pairs of 8-bit products in 16 bits, and 255 x 63 x 2 cannot saturate.
(`linear_dynamic` gets the same guarantee from 7-bit activations, `reduce_range`.)
"""

from __future__ import annotations

import warnings

import torch

from chitchat.errors import ChitchatError

_LEGACY = all(hasattr(torch, name) for name in (
    "fbgemm_linear_int8_weight_fp32_activation", "fbgemm_pack_quantized_matrix"))


def check_int8(device) -> None:
    if torch.device(device).type != "cpu":
        raise ChitchatError(f"--int8 runs on the CPU only (device {device})")
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm")):
        raise ChitchatError(f"--int8 needs PyTorch's x86/fbgemm quantized engine (this build has {', '.join(engines)})")


class Int8Linear:
    """`x @ weight + bias` for a weight given as (in, out) (Conv1D layout) or (out, in) with `out_in=True`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, out_in: bool = False):
        w = (weight if out_in else weight.t()).detach().float().contiguous()  # (out, in)
        self.out_features = w.shape[0]
        self.legacy = _LEGACY
        if self.legacy:
            self.scales = w.abs().amax(dim=1).clamp_min(1e-8) / 63.0
            self.qweight = torch.round(w / self.scales[:, None]).clamp_(-63, 63).to(torch.int8).contiguous()
            self.col_offsets = self.qweight.sum(dim=1, dtype=torch.int32)
            self.bias = (torch.zeros(w.shape[0]) if bias is None else bias.detach().float() / self.scales).contiguous()
            with warnings.catch_warnings():  # marked deprecated (in favour of linear_dynamic); warned once a process
                warnings.simplefilter("ignore")
                self.packed = torch.fbgemm_pack_quantized_matrix(self.qweight)
                self._unscaled(torch.zeros(1, w.shape[1]))
            return
        scales = (w.abs().amax(dim=1).clamp_min(1e-8) / 127.0).double()
        zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor creation is marked deprecated; the kernels are not
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.legacy:
            return self._unscaled(x).mul_(self.scales)
        # reduce_range: 7-bit activations, as fbgemm needs on CPUs without VNNI to avoid saturation
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def residual(self, x: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """`res + self(x)`, the scaling and the sum in one op."""
        if self.legacy:
            return torch.addcmul(res, self._unscaled(x), self.scales)
        return self(x).add_(res)

    def gelu(self, x: torch.Tensor, act) -> torch.Tensor:
        """`act(self(x))` (`act`: the tanh-approximated GELU)."""
        return act(self(x))

    def _unscaled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fbgemm_linear_int8_weight_fp32_activation(
            x, self.qweight, self.packed, self.col_offsets, 1.0, 0, self.bias)


_FEW_ROWS = 32  # more rows than this: the product is compute-bound, and one sgemm on (in, out) does best
# oneDNN's linear on a weight it packed once (the kernel inductor uses), for 9 to 128 rows
_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, name) for name in ("_reorder_linear_weight", "_linear_pointwise"))
_ONEDNN_ROWS = range(9, 129)


class Fp32Linear:
    """`x @ weight + bias` with the weight kept (in, out) and contiguous: one addmm per call.

    `set_transposed` adds a copy laid out (out, in), in two blocks of rows, for inputs of up to 32
    rows (decode steps; up to 8 where oneDNN takes the larger ones): one batched product
    `blocks @ x.T`. It is for weights that stream from memory (a decode step reads them all, more
    than a CPU's cache holds): on few rows MKL's sgemm on the (in, out) weight streams them more
    slowly than this form, which also lets 2 threads each stream one block. With `one_row` (2
    threads or more), one row goes this way too (MKL's matrix-vector product runs on one thread);
    on one thread the matrix-vector product is the better one.

    For 9 to 128 rows (decode steps of a server's batches, short prefills) `set_transposed` also
    asks oneDNN to pack the weight its own way (one more copy) and runs those products through it,
    with the GELU or the residual sum fused into the product, which saves a pass over the output;
    for 2 to 8 rows the two-block form is as fast or faster. bench/chat.py measures the engine
    these layers make."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, out_in: bool = False):
        self.weight = (weight.t() if out_in else weight).detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.out_features = self.weight.shape[1]
        self.blocks = self.block_bias = None  # (2, out / 2, in) and (2, out / 2, 1), from set_transposed
        self.one_row = False  # one row through `blocks` too (with 2 threads or more)
        self.onednn = None  # oneDNN's packed copy of the weight, from set_transposed, for 9 to 128 rows

    def transposed(self) -> list[torch.Tensor]:
        """The tensors of the (out, in) layout, for `set_transposed` (the caller may move them first)."""
        return [self.weight.t().contiguous()] + ([] if self.bias is None else [self.bias.clone()])

    def set_transposed(self, tensors: list[torch.Tensor]) -> None:
        k, n = self.weight.shape
        halves = 2 if n % 2 == 0 else 1
        self.blocks = tensors[0].view(halves, n // halves, k)
        self.block_bias = tensors[1].view(halves, n // halves, 1) if self.bias is not None else None
        if _ONEDNN and tensors[0].device.type == "cpu":
            try:
                self.onednn = torch.ops.mkldnn._reorder_linear_weight(tensors[0], 16)
                torch.ops.mkldnn._linear_pointwise(torch.zeros(_ONEDNN_ROWS[0], k), self.onednn, self.bias,
                                                   "none", [], "")  # fails here, not in a reply
            except RuntimeError:  # a build or CPU whose oneDNN cannot: the other layouts serve
                self.onednn = None

    def _use_onednn(self, x: torch.Tensor) -> bool:
        return self.onednn is not None and x.dim() == 2 and x.shape[0] in _ONEDNN_ROWS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_onednn(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "none", [], "")
        y = self._transposed(x)
        if y is not None:
            return y.view(1, -1) if y.shape[1] == 1 else y.t().contiguous()
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)

    def residual(self, x: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """`res + self(x)` (with the (out, in) layout, without a copy of the product)."""
        if self._use_onednn(x):
            return torch.ops.mkldnn._linear_pointwise.binary(x, res, self.onednn, self.bias, "add")
        y = self._transposed(x)
        if y is not None:
            return res.add(y.t())
        return self(x).add_(res)

    def gelu(self, x: torch.Tensor, act) -> torch.Tensor:
        """`act(self(x))` (`act`: the tanh-approximated GELU), fused into the product with oneDNN."""
        if self._use_onednn(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "gelu", [], "tanh")
        return act(self(x))

    def _transposed(self, x: torch.Tensor) -> torch.Tensor | None:
        """(out, rows) through the (out, in) layout, or None where the plain product serves."""
        rows = x.shape[0] if x.dim() == 2 else 0
        if self.blocks is None or not (1 < rows <= _FEW_ROWS or (rows == 1 and self.one_row)):
            return None
        xt = x.t()
        xt = xt.expand(self.blocks.shape[0], *xt.shape)
        y = torch.bmm(self.blocks, xt) if self.block_bias is None else torch.baddbmm(self.block_bias, self.blocks, xt)
        return y.view(self.out_features, rows)
