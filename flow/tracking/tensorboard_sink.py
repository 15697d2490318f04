"""TensorBoard event files under ``<run_dir>/tensorboard``: what ``tensorboard --logdir`` and
tbparse read. A resumed run appends a new event file to the same directory; the steps the old
files hold are read back first, so none is written twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def last_step(logdir: Path) -> int:
    """The highest step with a scalar in the event files of `logdir` (0: none)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last = 0
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(f)).Load():
                if event.HasField("summary") and event.summary.value:
                    last = max(last, int(event.step))
        except Exception:  # noqa: BLE001, S112 - a torn last record (killed mid-write): what came before counts
            continue
    return last


def _text(tag: str, text: str) -> Any:
    """A Text-tab summary value (the text plugin's one-string tensor)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(dtype=DT_STRING, string_val=[text.encode()],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary.Value(tag=tag, metadata=meta, tensor=tensor)


class TensorBoardSink:
    """Writes with TensorBoard's own event writer (not torch's SummaryWriter: the driver imports
    torch on a thread of its own at start-up, and a second importer would race it)."""

    name = "tensorboard"
    keeps_artifacts = False

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.writer: Any = None
        self.fresh = True

    def open(self) -> int:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        self.fresh = not any(self.logdir.glob("events.out.tfevents.*"))
        last = 0 if self.fresh else last_step(self.logdir)
        self.writer = EventFileWriter(str(self.logdir))
        return last

    def _write(self, step: int, values: list[Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        self.writer.flush()  # on disk per round: a run killed later keeps what it logged

    def params(self, values: dict[str, str]) -> None:
        if self.fresh:  # once per run directory, as a table in the Text tab
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(values.items()))
            self._write(0, [_text("settings", f"| setting | value |\n|---|---|\n{rows}")])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step, [Summary.Value(tag=k, simple_value=v) for k, v in sorted(values.items())])

    def finish(self, artifacts: list[Path]) -> None:  # noqa: ARG002 - TensorBoard has no artifact store
        self.writer.close()
