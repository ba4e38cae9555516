"""TensorBoard event files of a training run or a tuning study, hooked from above.

:class:`TensorBoardLogger` is a training callback (``ravine.train.train(...,
callbacks=[logger], on_epoch=logger.on_epoch)``; train never imports this module) that writes,
into the run folder's ``tensorboard/``:

- ``epoch/<metric>``: every epoch's losses and accuracies, as ``metrics.jsonl`` holds them
  (x axis: the epoch); for restarts the medians, and each member's own curves under
  ``tensorboard/member-<k>/``;
- ``step/loss`` and ``step/lr`` per update (from ``steps.csv``, the run's record of them), and
  ``step/grad_norm``, the global gradient norm after each update (one network);
- histograms ``weights/<name>`` and ``gradients/<name>`` at the end of every epoch (one
  network; for restarts each member's final weights);
- ``curvature/*`` and ``gradient_health/<layer>/*`` when those instruments ran;
- hparams: the optimizer's hyperparameters and the training settings, with the final metrics.

:func:`write_tune_events` writes a tuning study's trials (one run per trial: its validation
curve and its hyperparameters) from the study's ``trials.json``.

Run again on a finished study, it writes only the trials it has not written before. A resumed
training run appends new event files; TensorBoard drops the events of a tag whose step goes
back (what a resume after a crash between an epoch's log and its checkpoint looks like), so
each curve reads as one uninterrupted run. When the writer closes, the event files are
recorded in the folder's checksummed manifest (so ``--replace`` removes them with the run).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SUBFOLDER", "TensorBoardLogger", "write_tune_events"]

SUBFOLDER = "tensorboard"


def _writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    _after_existing_events(log_dir)
    return SummaryWriter(log_dir=str(log_dir), flush_secs=30)


def _after_existing_events(log_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after every one in ``log_dir``.

    TensorBoard reads a folder's event files in name order and skips events older than those
    it has read. The names start with the creation time in whole seconds, then host, process
    id and a per-process counter: a resumed run that opens its file within the second of the
    last one (the counter at 10 after 9, another process's smaller pid) could sort before it,
    and its epochs would be read out of order. A new second sorts after, whatever follows.
    """
    import time

    stamps = []
    for file in log_dir.glob("events.out.tfevents.*"):
        stamp = file.name.split(".")[3]
        if stamp.isdigit():
            stamps.append(int(stamp))
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if 0 < wait <= 1.0:  # (a file from the future: a clock set back; nothing to wait for)
            time.sleep(wait)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLogger:
    """Write a training run's TensorBoard events into ``<run folder>/tensorboard/`` (see the
    module doc). ``hparams``: the run's settings shown in TensorBoard's HParams tab."""

    def __init__(self, run_dir: str | Path, *, hparams: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / SUBFOLDER
        self.hparams = {k: v for k, v in (hparams or {}).items() if _hparam_value(v) is not None}
        self.model = None
        self._writer = None
        self._members: dict[int, Any] = {}
        self._pending: list[tuple[int, Any]] = []  # (step, gradient norm on the device)

    @property
    def writer(self):
        if self._writer is None:  # lazily: a run refused before training writes nothing
            self._writer = _writer(self.log_dir)
        return self._writer

    # -- the callback -----------------------------------------------------------------------

    def attach(self, model, optimizer) -> None:
        self.model = model

    def __call__(self, model, step: int) -> None:
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        if grads:
            import torch

            # Kept on the device and written at the epoch's end: reading it now would stall an
            # accelerator's pipeline on every update (as the trainer itself never does).
            norms = torch._foreach_norm(grads)
            self._pending.append((step, torch.linalg.vector_norm(torch.stack(norms))))

    def _flush(self) -> None:
        if self._pending:
            import torch

            values = torch.stack([norm for _, norm in self._pending]).tolist()  # one read
            for (step, _), value in zip(self._pending, values, strict=True):
                self.writer.add_scalar("step/grad_norm", value, step)
            self._pending.clear()

    def on_epoch(self, epoch: int, metrics: Mapping[int, Mapping[str, float]]) -> list[int]:
        """``train(..., on_epoch=...)``: this epoch's metrics, per member; prunes nobody."""
        self._flush()
        if self.model is not None:  # one network: its metrics, weights and last gradients
            for key, value in metrics.get(0, {}).items():
                if _finite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, epoch)
            self._histograms(self.writer, self.model.named_parameters(), epoch, gradients=True)
            return []
        for member, record in metrics.items():
            writer = self._member(member)
            for key, value in record.items():
                if _finite(value):
                    writer.add_scalar(f"epoch/{key}", value, epoch)
        return []

    def _member(self, k: int):
        if k not in self._members:
            self._members[k] = _writer(self.log_dir / f"member-{k:02d}")
        return self._members[k]

    @staticmethod
    def _histograms(writer, named_parameters, step: int, *, gradients: bool) -> None:
        for name, param in named_parameters:
            if param.numel() == 0:
                continue
            writer.add_histogram(f"weights/{name}", param.detach().cpu(), step)
            if gradients and getattr(param, "grad", None) is not None:
                writer.add_histogram(f"gradients/{name}", param.grad.detach().cpu(), step)

    # -- the end of the run -----------------------------------------------------------------

    def finish(self, result, *, curvature=None, gradient_health=None, signals=None) -> None:
        """After training: the medians of a run of members, the per-update loss and lr, the
        instruments' records, the hparams with the final metrics; then close and record the
        files. ``curvature``: a ``CurvatureTracker``; ``gradient_health``: a
        ``GradientHealthCallback``; ``signals``: a ``TrainingSignals`` (its scalars under
        ``signals/``)."""
        self._flush()
        writer = self.writer
        members = hasattr(result, "members")
        if members:  # medians over the members, as metrics.jsonl's own keys hold them
            for record in result.history:
                for key, value in record.items():
                    if key not in ("epoch", "step", "seconds", "lr") and _finite(value):
                        writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            for k in range(len(result.members)):
                params = {n: v[k] for n, v in result.params.items()}
                self._histograms(self._member(k), _Named(params), result.steps, gradients=False)
        for record in result.history:
            if _finite(record.get("lr")):
                writer.add_scalar("epoch/lr", record["lr"], record["epoch"])
        self._steps(writer)
        if curvature is not None:
            for record in curvature.to_records():
                for key in ("top", "bottom", "grad_norm", "loss"):
                    if _finite(record.get(key)):
                        writer.add_scalar(f"curvature/{key}", record[key], record["step"])
        if signals is not None:
            for record in signals.to_records():
                for key, value in record.items():
                    if key not in ("step", "probe_size", "batch_size") and _finite(value):
                        writer.add_scalar(f"signals/{key}", value, record["step"])
        if gradient_health is not None and gradient_health.monitor is not None:
            for record in gradient_health.monitor.history:
                for layer, stats in record.layers.items():
                    for key in ("grad_norm", "weight_norm", "update_ratio", "dead_fraction"):
                        value = getattr(stats, key)
                        if _finite(value):
                            writer.add_scalar(f"gradient_health/{layer}/{key}", value, record.step)
        finals = {}  # for restarts, the medians over the members
        for key, value in (result.summary if members else result.final).items():
            if members and not isinstance(value, dict):
                continue  # counts (members, diverged, best_member), not metrics
            value = value.get("median") if isinstance(value, dict) else value
            if _finite(value):
                finals[f"final/{key}"] = float(value)
        _write_hparams(writer, self.hparams, finals)
        self.close()

    def _steps(self, writer) -> None:
        path = self.run_dir / "steps.csv"
        if not path.is_file():
            return
        from ravine.folders import read_verified

        rows = csv.DictReader(io.StringIO(read_verified(path).decode("utf-8")))
        for row in rows:
            step = int(row["step"])
            for key in ("loss", "loss_median", "lr"):
                if row.get(key):
                    value = float(row[key])
                    if math.isfinite(value):
                        writer.add_scalar(f"step/{key}", value, step)

    def close(self) -> None:
        writers = [w for w in (self._writer, *self._members.values()) if w is not None]
        for writer in writers:
            writer.close()
        self._writer, self._members = None, {}
        if writers:
            record_files(self.log_dir)


class _Named:
    """``named_parameters()`` of a plain dict of tensors."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors

    def __iter__(self):
        yield from self.tensors.items()


def _hparam_value(value: Any) -> Any:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    return None


def _write_hparams(writer, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """hparams into ``writer``'s own folder (``SummaryWriter.add_hparams`` would open a new
    run in a subfolder named by the time, apart from the run's curves)."""
    from torch.utils.tensorboard.summary import hparams as summarize

    values = {k: _hparam_value(v) for k, v in hparams.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return
    experiment, start, end = summarize(values, dict(metrics))
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, 0)


def run_hparams(config, optimizer_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hparams of a training run: its data, model, optimizer and its hyperparameters,
    schedule and training settings, as flat ``table.key`` names."""
    tables = config.to_toml_tables()
    flat: dict[str, Any] = {}
    for table, values in tables.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for inner, v in value.items():
                    flat[f"{table}.{key}.{inner}"] = v
            else:
                flat[f"{table}.{key}"] = value
    for key, value in (optimizer_args or {}).items():
        flat[f"optimizer.{key}"] = value
    return flat


def record_files(log_dir: Path) -> None:
    """Enter the closed event files under ``log_dir`` into their folders' checksummed
    manifests (rewritten atomically, same bytes), so they belong to the run."""
    from ravine.folders import BOOKKEEPING, atomic_write, recorded

    for path in sorted(log_dir.rglob("*tfevents*")):
        if BOOKKEEPING in path.parts or not path.is_file() or recorded(path):
            continue
        data = path.read_bytes()
        atomic_write(path, lambda handle, data=data: handle.write(data))


# --------------------------------------------------------------------------------------------
# Tuning studies
# --------------------------------------------------------------------------------------------


def write_tune_events(folder: str | Path) -> Path:
    """A tuning study's trials as TensorBoard runs, ``<folder>/tensorboard/trial-<n>/``: each
    trial's validation curve (``epoch/<metric>``) and its hyperparameters with its value
    (hparams), read from ``trials.json`` and ``tune.json``. Returns the log folder."""
    from ravine.folders import read_verified

    folder = Path(folder)
    trials = json.loads(read_verified(folder / "trials.json"))
    summary = json.loads(read_verified(folder / "tune.json"))
    metric = summary.get("metric", "value")
    log_dir = folder / SUBFOLDER
    curves = trials.get("curves") or {}
    for trial in trials.get("trials") or []:
        number = int(trial["number"])
        if trial.get("state") in ("RUNNING", "WAITING") or _written(
            log_dir / f"trial-{number:04d}"
        ):
            continue  # a finished trial never changes: an earlier call wrote it already
        writer = _writer(log_dir / f"trial-{number:04d}")
        for epoch, value in curves.get(str(number)) or []:
            if _finite(value):
                writer.add_scalar(f"epoch/{metric}", value, int(epoch))
        params = {k[len("param_") :]: v for k, v in trial.items() if k.startswith("param_")}
        params.update({"state": trial.get("state", ""), "trial": number})
        value = trial.get("value")
        _write_hparams(writer, params, {f"final/{metric}": value} if _finite(value) else {})
        writer.close()
    record_files(log_dir)
    return log_dir


def _written(run_dir: Path) -> bool:
    from ravine.folders import recorded

    return any(recorded(p) for p in run_dir.glob("*tfevents*"))
