"""The TVM artifact: compile model.int.onnx, save it as a loadable library, load and run it.

    out/model.so         the Relax VM executable (`export_library`): every kernel, weights as constants
    out/model.tvm.json   {"format", "target", "cpu", "inputs": [{name, shape, dtype}], "outputs": [...]}

The library is built for static input shapes (those given, else the declared ones with batch 1) and,
on a CPU target, for the CPU that built it: `load` refuses a library whose recorded CPU is not this
one (an LLVM `-mcpu` build can use instructions another CPU lacks), and feeds of another shape.
Loading needs only TVM and NumPy, not the source model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

__all__ = [
    "FORMAT",
    "LIBRARY",
    "METADATA",
    "Compiled",
    "TvmModel",
    "kernel_flavour",
    "compile_int_model",
    "save",
    "load",
]

FORMAT = "qcompile-tvm/1"
LIBRARY, METADATA = "model.so", "model.tvm.json"


@dataclasses.dataclass
class Compiled:
    executable: object
    metadata: dict
    seconds: float


def _signature(values) -> list[dict]:
    return [{"name": v.name, "shape": [int(d) for d in v.shape], "dtype": str(v.dtype.numpy())} for v in values]


def kernel_flavour(target) -> str:
    """'cuda'; for x86 CPUs with AVX2 'avx512vnni' / 'avxvnni' when they have VNNI (IntLinear on
    vpdpbusd, zmm / ymm) and 'llvm' otherwise (every product on vpmaddwd int16 pairs); 'generic' for
    any other CPU."""
    from qcompile.backends.tvm.kernels.int_gemm_vnni import vnni_lanes
    from qcompile.backends.tvm.lowering.converters import VNNI_LANES
    from qcompile.backends.tvm.target import cpu_features

    if target.kind.name == "cuda":
        return "cuda"
    features = cpu_features(target)
    if "avx2" not in features:
        return "generic"
    lanes = vnni_lanes(features)
    return next((name for name, width in VNNI_LANES.items() if width == lanes), "llvm")


def compile_int_model(
    model: onnx.ModelProto,
    target: str = "llvm",
    shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int = 1,
    threads: int | None = None,
) -> Compiled:
    """Lower and compile an integer-only model for `target` ('llvm', 'cuda', 'cuda:sm_XX')."""
    from tvm.target import codegen

    from qcompile.backends.tvm.build import compile_relax
    from qcompile.backends.tvm.lowering.importer import to_relax
    from qcompile.backends.tvm.prepare import static_model
    from qcompile.backends.tvm.target import parse_target

    start = time.perf_counter()
    tvm_target = parse_target(target, threads)
    static = static_model(model, shapes, batch)
    metadata = {
        "format": FORMAT,
        "target": str(tvm_target),
        "kind": tvm_target.kind.name,
        "kernels": kernel_flavour(tvm_target),
        "cpu": str(codegen.llvm_get_system_cpu()),
        "inputs": _signature(static.graph.inputs),
        "outputs": _signature(static.graph.outputs),
    }
    executable = compile_relax(to_relax(static, kernel_flavour(tvm_target)), tvm_target)
    return Compiled(executable, metadata, time.perf_counter() - start)


def save(compiled: Compiled, directory: Path) -> list[Path]:
    """Write model.so and model.tvm.json into `directory`; returns their paths."""
    directory = Path(directory)
    library, metadata = directory / LIBRARY, directory / METADATA
    compiled.executable.export_library(str(library))
    metadata.write_text(json.dumps(compiled.metadata, indent=2) + "\n")
    return [library, metadata]


class TvmModel:
    """A loaded artifact: `run({name: array}) → {name: array}` on the device it was built for."""

    def __init__(self, directory: Path) -> None:
        import tvm
        from tvm import relax
        from tvm.target import codegen

        directory = Path(directory)
        if directory.suffix == ".so":
            directory = directory.parent
        meta_path = directory / METADATA
        if not meta_path.is_file() or not (directory / LIBRARY).is_file():
            raise FileNotFoundError(f"{directory} holds no TVM artifact ({LIBRARY} + {METADATA})")
        self.metadata = json.loads(meta_path.read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.metadata.get('format')!r}, expected {FORMAT!r}")
        if self.metadata["kind"] == "llvm" and self.metadata["cpu"] != str(codegen.llvm_get_system_cpu()):
            raise RuntimeError(
                f"{directory} was built for CPU {self.metadata['cpu']}; this CPU is {codegen.llvm_get_system_cpu()}"
            )
        self.device = tvm.cuda(0) if self.metadata["kind"] == "cuda" else tvm.cpu(0)
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(directory / LIBRARY)), self.device)
        self._tvm = tvm

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.metadata["inputs"]]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> list:
        """Feeds checked against the artifact's signature and copied to the device (reusable)."""
        tensors = []
        for spec in self.metadata["inputs"]:
            if spec["name"] not in feeds:
                raise KeyError(f"missing input {spec['name']!r}")
            array = np.asarray(feeds[spec["name"]])
            if list(array.shape) != spec["shape"]:
                raise ValueError(
                    f"input {spec['name']!r}: shape {list(array.shape)}, the library was built for {spec['shape']}"
                )
            tensors.append(self._tvm.runtime.tensor(np.array(array, dtype=spec["dtype"], order="C"), self.device))
        return tensors

    def run_prepared(self, tensors: list):
        return self._vm["main"](*tensors)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.run_prepared(self.prepare(feeds))
        results = [result] if hasattr(result, "numpy") else list(result)
        return {spec["name"]: r.numpy() for spec, r in zip(self.metadata["outputs"], results)}


def load(path: str | Path) -> TvmModel:
    """Load an artifact directory (or its model.so). It runs on TVM's thread pool, whose size is fixed
    at first use: TVM_NUM_THREADS (`qcompile.backends.tvm` defaults it to every available core)."""
    return TvmModel(Path(path))
