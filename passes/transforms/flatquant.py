"""FlatQuant (Sun et al. 2024; METHODS.md §8): learned Kronecker transforms, trained layer by layer, folded back.

Every site (an activation read only by linears, `flatquant_sites`) gets x' = (x ⊙ c)·(P1 ⊗ P2) and its
linears W ← (P1 ⊗ P2)⁻¹·diag(1/c)·W (`flatquant_train`), so the float model is unchanged in reals. The
parameters are trained on the calibration windows, **one decoder layer at a time** (two consecutive blocks
of the pre-norm residual stream, `gptq_blocks.stream_blocks`: attention then MLP), to minimise the mean
squared error between the float layer's output and the layer with fake-quantized weights (per output channel,
LWC ratios), activations (per token, one LAC ratio per site) and, with `kv_bits`, keys and values (per head
and token). As in the paper both see the float model's input of the layer, never a quantized one.
The layer's torch form is the IR itself, run by `qcompile.ir.torch_eval` with the sites and linears hooked.

After a layer is trained it returns to the IR in float64:
* diag(c) folds into γ or the up projection where `flatquant_sites` allows, else an online Mul;
* P1 ⊗ P2 runs online as `qcompile.KroneckerAffine(x, P1, P2)` (two small MatMuls) before the linears;
* the linears' weights become (P1 ⊗ P2)⁻¹·diag(1/c)·W;
* with `act_clip=learned` the transformed activation records its learned ratio sigmoid(β_a)
  (`quant_meta.set_learned_clip_ratio`), which a later per-token `quantize` uses for it; `act_clip=none` leaves
  the choice to `quantize` (e.g. its `act_clip_ratio=search`). The learned weight ratios only shape the
  training: weights are rounded by `quantize` afterwards (per-channel MSE clipping or GPTQ), as the paper's
  GPTQ rows do.

Each LAC ratio starts (`lac_init=search`) where `quantize`'s per-token clip search (`token_clip`) puts it for the
initial transform, not at the paper's sigmoid(4) = 0.982 (`lac_init=paper`): with a few dozen steps per layer
LAC then refines the best fixed ratio instead of having to reach it.

Defaults scaled to two CPU cores (the paper: 128 × 2048 tokens, batch 4, 15 epochs, lr 5e−3 with 10× for the
clipping parameters, cosine to lr·1e−3): `samples=32` windows of the calibration data, `batch=4`, `epochs=4`.
`init`: the factors start as randomized Hadamards (`hadamard`, a seeded random orthogonal matrix where no
Hadamard of that order exists), `identity` (refining an earlier `rotate`) or `random` (the paper's QR init).
The bit widths, the activation symmetry and the KV bits are taken from the steps that follow when not given.
`layers=N` trains only the first N layers (budget experiments; the other sites are reported as skipped).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile import runtime
from qcompile.calibration.token_clip import ROWS_PER_BATCH, TokenClipSearch
from qcompile.errors import InputError
from qcompile.ir import add_initializer, quant_meta, replace_const
from qcompile.ir.online_ops import insert_after, insert_kronecker, kronecker_rotate
from qcompile.ir.properties import Property
from qcompile.math.hadamard import random_hadamard, random_orthogonal
from qcompile.passes.quantize.gptq_blocks import block_model, block_nodes, stream_blocks
from qcompile.passes.transforms.flatquant_sites import FlatSite, find_flat_sites, kronecker_split
from qcompile.passes.transforms.kv_sites import find_kv_sites
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

if TYPE_CHECKING:  # torch loads when the pass runs: the CLI and the other passes start without it
    import torch

    from qcompile.ir.torch_eval import TorchEvaluator
    from qcompile.passes.transforms.flatquant_train import SiteTransform

__all__ = ["FlatQuantPass"]

INITS = ("hadamard", "identity", "random")
ACT_CLIPS = ("learned", "none")
LAC_INITS = ("search", "paper")
MAX_INITIAL_RATIO = 0.99  # a searched ratio of 1 starts LAC at sigmoid(β) = 0.99 (β finite)
SMOOTH_ALPHA = 0.3  # c = max|W_j|^(1−α) / max|X_j|^α, the paper's --diag_alpha


def _initial_factor(size: int, init: str, seed: int) -> np.ndarray:
    if init == "identity":
        return np.eye(size)
    if init == "random":
        return random_orthogonal(size, seed)
    return random_hadamard(size, seed)[0]


def _windows(context: PipelineContext, samples: int, batch: int) -> list[dict[str, np.ndarray]]:
    """The first `samples` calibration samples, re-split into batches of `batch` (every input's axis 0)."""
    if context.calibration is None:
        raise InputError("flatquant trains on calibration data (none was given)")
    merged: dict[str, list[np.ndarray]] = {}
    taken = 0
    for feeds in context.calibration.batches():
        count = min(next(iter(feeds.values())).shape[0], samples - taken)
        for name, array in feeds.items():
            merged.setdefault(name, []).append(array[:count])
        taken += count
        if taken >= samples:
            break
    arrays = {name: np.concatenate(parts) for name, parts in merged.items()}
    return [{name: a[start : start + batch] for name, a in arrays.items()} for start in range(0, taken, batch)]


def _block_inputs(model: ir.Model, nodes: list[ir.Node], start: ir.Value) -> list[ir.Value]:
    read = {id(v) for node in nodes for v in node.inputs if v is not None}
    return [start, *(v for v in model.graph.inputs if id(v) in read)]


def _fold_weight(array: np.ndarray, in_axis: int, a_inv: np.ndarray, b_inv: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(A ⊗ B)⁻¹·diag(1/c)·W along the input-channel axis, float64."""
    w = array.astype(np.float64)
    if in_axis == 0:
        return kronecker_rotate((w / c[:, None]).T, a_inv.T, b_inv.T).T
    return kronecker_rotate(w / c[None, :], a_inv.T, b_inv.T)


def _online_scale(model: ir.Model, x: ir.Value, c: np.ndarray) -> ir.Value:
    """Insert x ⊙ c (float32) after x's producer; returns the product."""
    scale = add_initializer(model, f"{x.name}_flat_c", c.astype(np.float32))
    mul = ir.node("Mul", [x, scale], name=f"{x.name}_flat_scale")
    out = mul.outputs[0]
    out.name, out.dtype, out.shape = f"{x.name}_scaled", x.dtype, x.shape
    insert_after(model, x.producer(), mul)
    return out


@register_pass("flatquant")
class FlatQuantPass(Pass):
    """Learned Kronecker transforms per linear-input site, trained layer by layer, folded into the IR."""

    requires = frozenset()
    establishes = frozenset()
    invalidates = frozenset({Property.CALIBRATED})
    numerics = Numerics.EXACT_IN_REALS
    inherited_options = {
        "act_bits": ("quantize", "act_bits"),
        "weight_bits": ("quantize", "weight_bits"),
        "act_symmetric": ("quantize", "act_symmetric"),
        "kv_bits": ("kv-quant", "bits"),
    }

    def __init__(
        self,
        act_bits: int = 4,
        weight_bits: int = 4,
        act_symmetric: bool | None = None,
        kv_bits: int = 0,
        samples: int = 32,
        batch: int = 4,
        epochs: int = 4,
        lr: float = 5e-3,
        init: str = "hadamard",
        act_clip: str = "learned",
        lac_init: str = "search",
        layers: int = 0,
        context: PipelineContext | None = None,
    ) -> None:
        super().__init__()
        for name, bits in (("act_bits", act_bits), ("weight_bits", weight_bits)):
            if not 2 <= int(bits) <= 8:
                raise ValueError(f"{name} must be between 2 and 8, got {bits}")
        if kv_bits not in (0, 2, 3, 4, 8):
            raise ValueError(f"kv_bits must be 0 (KV float), 2, 3, 4 or 8, got {kv_bits}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0 (0: every layer), got {layers}")
        if samples < 1 or batch < 1 or epochs < 0:
            raise ValueError("samples and batch must be >= 1 and epochs >= 0")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if lac_init not in LAC_INITS:
            raise ValueError(f"lac_init must be one of {', '.join(LAC_INITS)}, got {lac_init!r}")
        if act_clip not in ACT_CLIPS:
            raise ValueError(f"act_clip must be one of {', '.join(ACT_CLIPS)}, got {act_clip!r}")
        self.act_bits, self.weight_bits = int(act_bits), int(weight_bits)
        self.act_symmetric = True if act_symmetric is None else bool(act_symmetric)  # as `quantize` reads None
        self.kv_bits, self.samples, self.batch, self.epochs = int(kv_bits), int(samples), int(batch), int(epochs)
        self.lr, self.init, self.act_clip, self.lac_init = float(lr), init, act_clip, lac_init
        self.layers = int(layers)
        self.context = context or PipelineContext()

    # -- one layer -------------------------------------------------------------------------------------------

    def _transform(self, site: FlatSite, index: int, act_absmax: np.ndarray) -> SiteTransform:
        from qcompile.passes.transforms.flatquant_train import SiteTransform

        n1, n2 = kronecker_split(site.channels)
        seed = self.context.seed + 2 * index
        weight_absmax = np.max([linear.rows_absmax() for linear in site.linears], axis=0)
        scale = np.power(np.maximum(weight_absmax, 1e-8), 1 - SMOOTH_ALPHA) / np.power(
            np.maximum(act_absmax, 1e-8), SMOOTH_ALPHA
        )
        out_channels = [linear.array().shape[1 - linear.in_axis] for linear in site.linears]
        return SiteTransform(
            _initial_factor(n1, self.init, seed),
            _initial_factor(n2, self.init, seed + 1),
            scale,
            out_channels,
            self.act_bits,
            self.act_symmetric,
            self.weight_bits,
        )

    def _evaluator(
        self, model, nodes, inputs, transforms: dict[int, SiteTransform], sites, kv_values
    ) -> TorchEvaluator:
        from qcompile.ir.torch_eval import TorchEvaluator
        from qcompile.passes.transforms.flatquant_train import fake_quant_tokens

        evaluator = TorchEvaluator(nodes, inputs, model.functions)
        for site in sites:
            transform = transforms[id(site.x)]
            evaluator.value_hooks[id(site.x)] = transform.activation
            for index, linear in enumerate(site.linears):

                def linear_override(node, args, transform=transform, linear=linear, index=index):
                    weight = transform.weight(args[1], linear.in_axis, index)
                    return evaluator.apply(node, [args[0], weight, *args[2:]])

                evaluator.overrides[id(linear.node)] = linear_override
        for value in kv_values:
            evaluator.value_hooks[id(value)] = lambda t: fake_quant_tokens(t, self.kv_bits, False, 1.0)
        return evaluator

    def _train_layer(self, model, nodes, start, end, sites, kv_values, batches, states, targets) -> dict:
        import torch

        inputs = _block_inputs(model, nodes, start)
        feeds = [self._torch_feeds(inputs, batch, state) for batch, state in zip(batches, states)]
        absmax, rows = self._observe_sites(model, nodes, inputs, feeds, end, sites)
        transforms = {id(s.x): self._transform(s, i, absmax[id(s.x)]) for i, s in enumerate(sites)}
        if self.lac_init == "search":
            for site in sites:
                self._start_at_searched_ratio(site, transforms[id(site.x)], rows[id(site.x)])
        evaluator = self._evaluator(model, nodes, inputs, transforms, sites, kv_values)
        modules = list(transforms.values())
        clip = [p for m in modules for p in [m.act_beta, *m.weight_betas]]
        clip_ids = {id(p) for p in clip}
        rest = [p for m in modules for p in m.parameters() if id(p) not in clip_ids and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [{"params": rest, "lr": self.lr}, {"params": clip, "lr": 10 * self.lr}], weight_decay=0.0
        )
        steps = max(1, self.epochs * len(feeds))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=self.lr * 1e-3)
        target_tensors = [torch.from_numpy(t) for t in targets]
        curve = [self._loss(evaluator, end, feeds, target_tensors)]
        for _ in range(self.epochs):
            total = 0.0
            for feed, target in zip(feeds, target_tensors):
                (out,) = evaluator.run(feed, [end])
                loss = torch.mean((out - target) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
            curve.append(total / len(feeds))
        curve.append(self._loss(evaluator, end, feeds, target_tensors))
        return {"transforms": transforms, "curve": curve}

    def _observe_sites(self, model, nodes, inputs, feeds, end, sites) -> tuple[dict, dict]:
        """One float run of the layer: per site, max |x_j| over all tokens (for c) and the rows the clip search
        reads (`ROWS_PER_BATCH` per batch, drawn as `TokenClipSearch` draws them)."""
        import torch

        from qcompile.ir.torch_eval import TorchEvaluator

        absmax = {id(s.x): np.zeros(s.channels) for s in sites}
        rows: dict[int, list[np.ndarray]] = {id(s.x): [] for s in sites}

        def observe(site):
            rng = np.random.default_rng(self.context.seed)

            def hook(t):
                array = t.detach().reshape(-1, site.channels).numpy()
                absmax[id(site.x)] = np.maximum(absmax[id(site.x)], np.abs(array).max(axis=0))
                if len(array) > ROWS_PER_BATCH:
                    array = array[rng.choice(len(array), ROWS_PER_BATCH, replace=False)]
                rows[id(site.x)].append(array)
                return t

            return hook

        probe = TorchEvaluator(nodes, inputs, model.functions, value_hooks={id(s.x): observe(s) for s in sites})
        with torch.no_grad():
            for feed in feeds:
                probe.run(feed, [end])
        return absmax, rows

    def _start_at_searched_ratio(self, site: FlatSite, transform: SiteTransform, rows: list[np.ndarray]) -> None:
        """LAC starts at the `token_clip` search's choice for the initial transform: the site's observed rows
        moved by it, the error weighted by diag(W' W'ᵀ) of the transformed weights."""
        import torch

        with torch.no_grad():
            weight = sum(
                (transform.transformed_weight(torch.from_numpy(np.array(lin.array())), lin.in_axis) ** 2)
                .sum(dim=1 - lin.in_axis)
                .double()
                for lin in site.linears
            )
            search = TokenClipSearch(self.act_bits, self.act_symmetric, weight.numpy(), seed=self.context.seed)
            for array in rows:
                search.update(transform.transform(torch.from_numpy(array)).numpy())
            ratio = min(search.best(), MAX_INITIAL_RATIO)
            transform.act_beta.fill_(math.log(ratio / (1 - ratio)))

    @staticmethod
    def _loss(evaluator, end, feeds, targets) -> float:
        import torch

        with torch.no_grad():
            return float(
                np.mean([float(torch.mean((evaluator.run(f, [end])[0] - t) ** 2)) for f, t in zip(feeds, targets)])
            )

    @staticmethod
    def _torch_feeds(inputs, batch, state) -> list[torch.Tensor]:
        import torch

        return [torch.from_numpy(np.asarray(state if i == 0 else batch[v.name])) for i, v in enumerate(inputs)]

    # -- folding -------------------------------------------------------------------------------------------

    def _fold(self, model: ir.Model, site: FlatSite, transform: SiteTransform, index: int) -> dict:
        a, b, a_inv, b_inv, c = transform.factors64()
        x = site.x
        if site.fold == "gamma":
            replace_const(site.fold_value, site.fold_value.const_value.numpy().astype(np.float64) * c)
        elif site.fold == "linear":
            replace_const(site.fold_value, site.fold_value.const_value.numpy().astype(np.float64) * c[None, :])
        else:
            x = _online_scale(model, x, c)
        moved = insert_kronecker(model, x, a, b, f"{site.name}_flat", f"flatquant_{index}")
        for linear in site.linears:
            replace_const(linear.weight, _fold_weight(linear.array(), linear.in_axis, a_inv, b_inv, c))
            linear.node.replace_input_with(0, moved)
        ratio = transform.clip_ratio()
        if self.act_clip == "learned":
            quant_meta.set_learned_clip_ratio(moved, ratio)
        sigmas = np.concatenate([transform.left.sigma.detach().numpy(), transform.right.sigma.detach().numpy()])
        return {
            "factors": list(kronecker_split(site.channels)),
            "fold": site.fold,
            "act_clip_ratio": round(ratio, 4),
            "sigma_range": [round(float(sigmas.min()), 4), round(float(sigmas.max()), 4)],
        }

    # -- the pass ------------------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> PassResult:
        import torch

        sites, skipped = find_flat_sites(model.graph)
        blocks = stream_blocks(model)
        if isinstance(blocks, str):
            raise InputError(f"flatquant needs a pre-norm residual stream to train layer by layer: {blocks}")
        if not sites:
            raise InputError("flatquant found no activation read only by linears")
        layers = [blocks[i : i + 2] for i in range(0, len(blocks) - 1, 2)]
        layers = [[b for b in layer if b.end is not None] for layer in layers]
        if self.layers:
            layers = layers[: self.layers]
        kv_sites, _ = find_kv_sites(model) if self.kv_bits else ([], {})
        kv_values = [v for s in kv_sites for v in (s.new_key, s.new_value)]
        batches = _windows(self.context, self.samples, self.batch)
        torch.manual_seed(self.context.seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.context.threads)
        first = block_model(model, [], [blocks[0].start])
        session = runtime.make_session(first, threads=self.context.threads)
        states = [runtime.run(session, f, [blocks[0].start.name])[blocks[0].start.name] for f in batches]
        report, folded, index = [], set(), 0
        started = time.perf_counter()
        try:
            for layer in tqdm(layers, desc="flatquant", unit="layer", disable=not self.context.progress, leave=False):
                start, end = layer[0].start, layer[-1].end
                nodes = block_nodes(model, [start], [end])
                inside = {id(n) for n in nodes}
                layer_sites = [s for s in sites if all(id(lin.node) in inside for lin in s.linears)]
                layer_kv = [v for v in kv_values if v.producer() is not None and id(v.producer()) in inside]
                proto = block_model(model, [start], [end])
                session = runtime.make_session(proto, threads=self.context.threads)
                targets = [
                    runtime.run(session, {**f, start.name: s}, [end.name])[end.name] for f, s in zip(batches, states)
                ]
                if layer_sites:
                    trained = self._train_layer(
                        model, nodes, start, end, layer_sites, layer_kv, batches, states, targets
                    )
                    for site in layer_sites:
                        report.append(
                            {"site": site.name, **self._fold(model, site, trained["transforms"][id(site.x)], index)}
                        )
                        folded.add(id(site.x))
                        index += 1
                    report[-1]["layer_curve"] = [round(v, 8) for v in trained["curve"]]
                states = targets
        finally:
            torch.set_num_threads(threads)
        for site in sites:
            if id(site.x) not in folded:
                skipped[site.name] = "not in a trained layer (outside the residual stream's layers, or after layers=N)"
        stats = {
            "sites": report,
            "skipped": skipped,
            "layers": len(layers),
            "samples": sum(len(next(iter(b.values()))) for b in batches),
            "epochs": self.epochs,
            "seconds": round(time.perf_counter() - started, 1),
        }
        return PassResult(model, modified=bool(report), stats=stats)
