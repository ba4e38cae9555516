"""What a training run writes into its folder (data only: figures are drawn by ravine.report).

A one-network run::

    config.toml       the resolved config (a resumed run must match it)
    metrics.jsonl     one line per epoch: losses, accuracies, lr, wall time
    steps.csv         one line per update: step, loss, lr
    checkpoint.pt     the latest complete checkpoint (and checkpoint.prev.pt, the one before)
    model.pt          the final weights (plus the standardizer), for probes and pre-initialization
    summary.json      final metrics (and the snapshot ensemble's, when there is one)

A run of N members (restarts) writes the same files, with ``metrics.jsonl`` holding the median
over the members under train()'s keys and ``per_member`` lists of every member's values,
``steps.csv`` the median / min / max member loss, and::

    model.pt          the best member's state dict as "model", every member stacked (N, ...)
    restarts.json     per-member final metrics, best / median / worst / std, ensemble
    restarts.csv      one row per member

Every file is written atomically and checksummed (:mod:`ravine.folders`); logs are rewritten
whole from the checkpointed history, so a resumed run's logs have no duplicated or missing lines.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ravine.folders import atomic_write_text, save_checkpoint
from ravine.train.config import TrainConfig, dump_toml


def write_logs(
    out: Path, history: Sequence[dict], step_log: Sequence[Sequence], members: int
) -> None:
    """``metrics.jsonl`` and ``steps.csv`` from the whole history."""
    atomic_write_text(
        out / "metrics.jsonl", "".join(json.dumps(strict_json(r)) + "\n" for r in history)
    )
    header = (
        ["step", "loss", "lr"]
        if members == 1
        else ["step", "lr", "loss_median", "loss_min", "loss_max"]
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(step_log)
    atomic_write_text(out / "steps.csv", buffer.getvalue())


def write_single(
    out: Path, config: TrainConfig, model_state, standardizer, history, final, ensemble
) -> None:
    """``model.pt`` and ``summary.json`` of a one-network run."""
    save_checkpoint(
        {
            "model": model_state,
            "standardizer": standardizer.state_dict() if standardizer else None,
            "config": dump_toml(config.to_toml_tables()),
        },
        out / "model.pt",
    )
    summary = {"final": final, "ensemble": ensemble, "epochs": len(history)}
    if history:
        summary["seconds"] = history[-1]["seconds"]
    atomic_write_text(out / "summary.json", json.dumps(strict_json(summary), indent=2))


def write_members(out: Path, config: TrainConfig, result, standardizer, rows: list[dict]) -> None:
    """``model.pt``, ``restarts.json`` and ``restarts.csv`` of a run of N members."""
    summary = result.summary
    chosen = summary.get("best_member", 0)
    save_checkpoint(
        {
            "model": result.state_dict(chosen),  # a single network: the best member's
            "best_member": chosen,
            "stacked": {"params": result.params, "buffers": result.buffers},  # (N, ...)
            "members": len(result.members),
            "diverged": result.diverged,
            "standardizer": standardizer.state_dict() if standardizer else None,
            "config": dump_toml(config.to_toml_tables()),
        },
        out / "model.pt",
    )
    report = {
        "members": len(result.members),
        "method": result.method,
        "shared_data_order": config.shared_data_order,
        "epochs": len(result.history),
        "steps": result.steps,
        "seconds": result.history[-1]["seconds"] if result.history else 0.0,
        "diverged": result.diverged,
        "summary": summary,
        "ensemble": result.ensemble,
        "per_member": rows,
    }
    atomic_write_text(out / "restarts.json", json.dumps(strict_json(report), indent=2))
    write_csv(out / "restarts.csv", rows)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of dicts as a CSV table (columns in the order they first appear; NaN/Inf empty),
    written atomically."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(strict_json(list(rows)))
    atomic_write_text(path, buffer.getvalue())


def summarize(final: list[dict[str, float]], healthy: list[int], val_key: str) -> dict[str, Any]:
    """Per metric: best / median / worst / mean / std over the ``healthy`` members, and the
    member with the best held-out loss (``best_member``, selected by ``val_key``)."""
    summary: dict[str, Any] = {"members": len(final), "diverged": len(final) - len(healthy)}
    if not healthy:
        return summary
    for key in final[0]:
        values = [final[k][key] for k in healthy]
        higher_better = key.endswith("accuracy")
        summary[key] = {
            "best": max(values) if higher_better else min(values),
            "median": statistics.median(values),
            "worst": min(values) if higher_better else max(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    summary["best_member"] = min(healthy, key=lambda k: final[k][val_key])
    summary["selected_by"] = val_key
    return summary


def median(values: Sequence[float | None]) -> float:
    """The median of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def value_range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


def strict_json(tree: Any) -> Any:
    """``tree`` with NaN/Inf floats as None: strict JSON, which has no NaN."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    if isinstance(tree, dict):
        return {k: strict_json(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [strict_json(v) for v in tree]
    return tree
