"""Streaming calibration: run the float model batch by batch and update per-value observers.

The watched values are exposed as extra graph outputs of one ONNX Runtime session; each batch's arrays
update the observers' fixed-size running statistics and are dropped, so peak memory depends on the batch
size and the model, never on the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile.calibration.observers import ChannelAbsMax, Observer
from qcompile.pipeline.context import CalibrationData

__all__ = ["stream_statistics"]


def _update_channels(tracker: ChannelAbsMax, array) -> bool:
    """Update per-channel absmax; False when the array's last axis does not match earlier batches."""
    if array.ndim == 0 or (tracker.num_channels is not None and array.shape[-1] != tracker.num_channels):
        return False
    tracker.update(array)
    return True


def stream_statistics(
    model: ir.Model,
    data: CalibrationData,
    value_names: Sequence[str],
    make_observer: Callable[[str], Observer],
    *,
    channel_stats: bool = True,
    threads: int = 2,
    progress: bool = True,
) -> tuple[dict[str, Observer], dict[str, ChannelAbsMax]]:
    """Observers (and per-channel absmax trackers) for `value_names`, updated over every batch of `data`."""
    from qcompile import runtime

    session = runtime.make_session(runtime.with_outputs(model, value_names), threads=threads)
    observers = {name: make_observer(name) for name in value_names}
    channels = {name: ChannelAbsMax() for name in value_names} if channel_stats else {}
    with tqdm(total=data.samples, desc="calibrate", unit="sample", disable=not progress, leave=False) as bar:
        for feeds in data.batches():
            outputs = runtime.run(session, feeds, value_names)
            for name, array in outputs.items():
                observers[name].update(array)
                if name in channels and not _update_channels(channels[name], array):
                    del channels[name]  # the last axis varies (e.g. sequence length): no channel statistics
            bar.update(next(iter(feeds.values())).shape[0])
            del outputs
    return observers, channels
