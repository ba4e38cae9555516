"""Random restarts, vectorized: N independently initialized networks trained as one computation.

``train_restarts(config, out_dir)`` trains ``config.restarts`` copies of one architecture whose
parameters are stacked into ``(N, ...)`` tensors. Every update is one batched forward, one
backward of the sum of the N per-restart losses (restart k's gradient depends on restart k's
loss only) and one ravine optimizer step over the stacked tensors — no Python loop over models.

Restart k is the run ``train()`` would do with ``seed = config.seed + k``: the same
initialization (``seeds(seed + k)["init"]``), the same data order (one ``randperm`` per epoch
from ``seeds(seed + k)["data"]``), the same gradient noise, and the same schedule (stepped once
per update). ``tests/test_restarts.py`` checks that restart k ends with the parameters of that
sequential run. With ``shared_data_order=True`` every restart uses restart 0's data order and
gradient noise, so only the initialization differs. Dropout masks are drawn per restart
(``vmap(randomness="different")``) from the global generator seeded with restart 0's dropout
seed: reproducible, but not the masks the sequential runs would draw. All restarts share one
train/validation split (``val_fraction``), which ``prepare_data`` draws from ``config.seed``:
restarts compared or ensembled on held-out data must be held out on the same examples, so with
``val_fraction > 0`` restart k matches a sequential run that holds out those examples too.

Two implementations of the batched forward, chosen by ``method``:

* ``"vmap"``: ``torch.func.vmap`` over ``torch.func.functional_call`` of the model
  (:func:`ravine.problems.models.make_functional`, batch norm's running statistics included).
  Any model.
* ``"bmm"``: for MLP-like ``nn.Sequential`` models (Flatten, Linear, BatchNorm1d, elementwise
  activations, Dropout), the stacked layers as batched matmuls
  (``baddbmm(b, h, W^T)``, ``h: (restarts, batch, features)``) and batch norm as one
  ``F.batch_norm`` over ``restarts x features`` channels. The same operations as the
  sequential model's, without vmap's per-call overhead: 1.1x (64 restarts) to 1.8x
  (1 restart) faster on the digits MLP (``benchmarks/restarts.py``).
* ``"auto"`` (default): ``"bmm"`` where the model allows it, else ``"vmap"``.

Per-restart gradient transforms. The engine's ``max_grad_norm`` takes one norm over every
tensor it holds, which over stacked tensors would couple the restarts; so clipping (by value,
then by each restart's own global norm, as the engine orders them) is done here, row by row,
and the optimizer runs with clipping off. Every other part of a ravine optimizer is
elementwise (plus a step count shared by all rows), so one optimizer over the stacked tensors
updates each row as its own optimizer would.

Divergence. The optimizer runs with ``nonfinite="ignore"``: a restart whose loss or gradient
turns NaN/Inf keeps its NaN in its own rows (nothing else reads them), is flagged as diverged
at that step, is reported as such in ``restarts.json`` / ``restarts.csv``, and is left out of
the summary statistics and the ensemble. A sequential run would instead have refused the step
(``nonfinite="raise"`` or ``"skip"``); a per-row refusal cannot share the optimizer's step
count, so the batched run does not attempt it.

A run writes to its output folder::

    config.toml             the resolved config (a resumed run must match it)
    metrics.jsonl           one line per epoch: train()'s keys holding the median over the
                            restarts, and ``per_restart`` lists of every restart's values
    steps.csv               one line per update: lr and the median / min / max restart loss
    restarts_checkpoint.pt  the latest complete checkpoint (atomic), from which a run resumes
    model.pt                stacked final parameters and buffers ``(N, ...)``, the best
                            restart's state dict as ``"model"``, the standardizer and config
    restarts.json           per-restart final metrics, best / median / worst / std, ensemble
    restarts.csv            one row per restart
    restarts.png            the distribution of final losses over the restarts
    curves.png              median loss and accuracy per epoch
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ravine.folders import atomic_write_text, load_latest_checkpoint, save_checkpoint
from ravine.optim import make_optimizer
from ravine.optim._math import clip_coefficient
from ravine.problems import build_model
from ravine.problems.models import make_functional, pre_initialize, stack_models
from ravine.train.config import ConfigError, TrainConfig, dump_toml
from ravine.train.loop import (
    ResumeWarning,
    claim_run_folder,
    ensemble_metrics,
    input_view,
    loss_function,
    make_run_schedule,
    model_config,
    prepare_data,
    seeds,
    total_steps,
)

__all__ = [
    "METHODS",
    "RestartsResult",
    "RestartsTrainer",
    "bmm_forward",
    "per_restart_loss",
    "per_restart_norm",
    "restart_state_dict",
    "train_restarts",
    "vmap_forward",
]

CHECKPOINT = "restarts_checkpoint.pt"
METHODS = ("auto", "vmap", "bmm")
"""Values of ``train_restarts(method=...)``."""


@dataclass
class RestartsResult:
    """What a finished batched run returns (everything is also on disk in ``out_dir``)."""

    out_dir: Path
    model: nn.Module  # the architecture, holding restart 0's initial weights (see model_of)
    params: dict[str, Tensor]  # name -> (N, *shape) final parameters
    buffers: dict[str, Tensor]  # name -> (N, *shape) final buffers (batch-norm statistics)
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    final: list[dict[str, float]]  # per restart, at the end, eval mode: train/val/test metrics
    summary: dict[str, Any]  # per metric: best / median / worst / mean / std over restarts
    ensemble: dict[str, float] | None  # the restarts' averaged softmax on the test split
    diverged: list[int]  # restarts whose loss or gradient turned NaN/Inf
    steps: int  # updates done
    method: str  # "vmap" or "bmm"
    resumed_from_epoch: int | None  # the checkpoint's epoch, when the run resumed

    @property
    def restarts(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Restart ``k``'s state dict, loadable into ``build_model(...)`` of the config."""
        return restart_state_dict(self.model, self.params, self.buffers, k)

    def model_of(self, k: int) -> nn.Module:
        """A standalone ``nn.Module`` (eval mode) holding restart ``k``'s final weights."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.state_dict(k))
        return model.eval()


def restart_state_dict(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], k: int
) -> dict[str, Tensor]:
    """Row ``k`` of stacked ``params`` / ``buffers`` as a state dict in ``model``'s key order."""
    rows = {**params, **buffers}
    return {name: rows[name][k].detach().clone() for name in model.state_dict()}


# --------------------------------------------------------------------------------------------
# Batched forward passes
# --------------------------------------------------------------------------------------------

Forward = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def vmap_forward(model: nn.Module) -> Forward:
    """``forward(params, buffers, x, training=, shared=) -> (out, new_buffers)`` via vmap.

    ``x``: ``(N, batch, ...)``, or ``(batch, ...)`` seen by every restart when ``shared``.
    ``out``: ``(N, batch, outputs)``. ``buffers`` are not modified (see make_functional).
    """
    f = make_functional(model)

    def forward(params, buffers, x, *, training: bool, shared: bool = False):
        model.train(training)
        batched = torch.func.vmap(f, in_dims=(0, 0, None if shared else 0), randomness="different")
        return batched(params, buffers, x)

    return forward


# Modules that act elementwise and hold no state: the bmm path calls them on (N, B, F) as is.
_ELEMENTWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.Softplus,
    nn.Identity,
)


def bmm_forward(model: nn.Module) -> Forward | None:
    """The same interface as :func:`vmap_forward` with stacked matmuls, or ``None`` when
    ``model`` is not an MLP-like ``nn.Sequential`` (Flatten, Linear, BatchNorm1d, Dropout,
    elementwise activations, nested Sequentials)."""
    plan = _bmm_plan(model)
    if plan is None:
        return None
    n_param = {name for name, _ in model.named_parameters()}
    used = {f"{prefix}.{key}" for _, prefix, layer in plan for key, _ in layer.named_parameters()}
    if used != n_param:
        return None

    def forward(params, buffers, x, *, training: bool, shared: bool = False):
        n = next(iter(params.values())).shape[0]
        # Clones take batch norm's in-place running-stat updates; the caller's stay untouched.
        new_buffers = {k: b.clone() for k, b in buffers.items()} if training else dict(buffers)
        h = x.expand(n, *x.shape) if shared else x  # (N, batch, ...)
        for op, prefix, layer in plan:
            if op == "flatten":
                h = h.flatten(2)
            elif op == "linear":
                weight = params[f"{prefix}.weight"].transpose(1, 2)  # (N, in, out)
                bias = params.get(f"{prefix}.bias")
                if bias is None:
                    h = torch.bmm(h, weight)
                else:
                    h = torch.baddbmm(bias.unsqueeze(1), h, weight)  # (N, batch, out)
            elif op == "batch_norm":
                h = _stacked_batch_norm(h, params, new_buffers, prefix, layer, training)
            elif op == "dropout":
                h = F.dropout(h, layer.p, training)
            else:
                h = layer(h)
        return h, new_buffers

    return forward


def _bmm_plan(model: nn.Module) -> list[tuple[str, str, nn.Module]] | None:
    if type(model) is not nn.Sequential:
        return None
    plan: list[tuple[str, str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str) -> bool:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if type(child) is nn.Sequential:
                if not visit(child, f"{full}."):
                    return False
            elif type(child) is nn.Linear:
                plan.append(("linear", full, child))
            elif type(child) is nn.BatchNorm1d and child.track_running_stats:
                if child.momentum is None:  # cumulative averaging: left to vmap (and its error)
                    return False
                plan.append(("batch_norm", full, child))
            elif type(child) is nn.Flatten and (child.start_dim, child.end_dim) == (1, -1):
                plan.append(("flatten", full, child))
            elif type(child) is nn.Dropout:
                plan.append(("dropout", full, child))
            elif type(child) in _ELEMENTWISE:
                plan.append(("elementwise", full, child))
            else:
                return False
        return True

    return plan if visit(model, "") else None


def _stacked_batch_norm(h, params, buffers, prefix, layer, training):
    # (N, B, C) -> (B, N*C): N*C independent channels, so the very kernel the sequential
    # BatchNorm1d runs normalizes each restart's features over the batch, and updates the
    # flattened views of each restart's running statistics in place.
    n, b, c = h.shape
    flat = h.transpose(0, 1).reshape(b, n * c)
    weight, bias = params.get(f"{prefix}.weight"), params.get(f"{prefix}.bias")
    if training:
        buffers[f"{prefix}.num_batches_tracked"].add_(1)
    out = F.batch_norm(
        flat,
        buffers[f"{prefix}.running_mean"].view(n * c),
        buffers[f"{prefix}.running_var"].view(n * c),
        None if weight is None else weight.reshape(n * c),
        None if bias is None else bias.reshape(n * c),
        training,
        layer.momentum,
        layer.eps,
    )
    return out.view(b, n, c).transpose(0, 1)


def per_restart_loss(output: Tensor, target: Tensor, task: str) -> Tensor:
    """``(N,)`` mean loss of each restart: cross-entropy or MSE, as ``loss_function`` computes
    it for one network. ``output``: ``(N, batch, outputs)``; ``target``: ``(N, batch[, k])``."""
    n, b = output.shape[:2]
    if task == "classification":
        losses = F.cross_entropy(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
        return losses.view(n, b).mean(dim=1)
    return F.mse_loss(output, target, reduction="none").flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# The batched trainer (no I/O, no evaluation: what the benchmark times)
# --------------------------------------------------------------------------------------------


class RestartsTrainer:
    """N restarts' stacked state and the batched update; :func:`train_restarts` adds the rest.

    Build it with :meth:`from_config`; :meth:`run_epoch` does one epoch of updates.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        *,
        task: str,
        input_shape: tuple[int, ...],
        total: int,
        method: str = "auto",
        device: torch.device | str = "cpu",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.config, self.model, self.task = config, model, task
        self.device = torch.device(device)
        self.n = config.restarts
        self.input_shape = input_shape
        self.total = total
        self.params = {k: v.to(self.device).requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(self.device) for k, v in buffers.items()}
        forward = bmm_forward(model) if method in ("auto", "bmm") else None
        if method == "bmm" and forward is None:
            raise ConfigError(
                f"method 'bmm' needs an MLP-like nn.Sequential; {config.model!r} is not one "
                "(use method 'vmap' or 'auto')"
            )
        self.method = "bmm" if forward is not None else "vmap"
        self.forward = forward if forward is not None else vmap_forward(model)

        args = dict(config.optimizer_args)
        args["nonfinite"] = "ignore"  # divergence is tracked per restart, see the module doc
        try:
            self.optimizer = make_optimizer(config.optimizer, self.params.values(), **args)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"optimizer: {error}") from None
        # Clipping moves out of the engine (one norm over every tensor) into per-restart clipping.
        group = self.optimizer.param_groups[0]
        self.max_grad_norm, self.clip_value = group["max_grad_norm"], group["clip_value"]
        for group in self.optimizer.param_groups:
            group["max_grad_norm"] = group["clip_value"] = None
        self.schedule = make_run_schedule(config, self.optimizer, total)

        shared = config.shared_data_order
        run_seeds = [config.seed + (0 if shared else k) for k in range(self.n)]
        self.data_gens = [torch.Generator().manual_seed(seeds(s)["data"]) for s in run_seeds]
        self.noise_gens = [torch.Generator().manual_seed(seeds(s)["noise"]) for s in run_seeds]
        if shared:  # one stream, as restart 0 draws it
            self.data_gens, self.noise_gens = self.data_gens[:1], self.noise_gens[:1]
        self.step = 0
        self.diverged_step = torch.full((self.n,), -1, dtype=torch.int64, device=self.device)
        self.active = torch.ones(self.n, dtype=torch.bool, device=self.device)  # not stopped

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        splits,
        *,
        method: str = "auto",
        device: torch.device | str = "cpu",
    ) -> RestartsTrainer:
        """Initialize restart k as ``train()`` would with seed ``config.seed + k``."""
        mconfig = model_config(config)
        dataset = splits.dataset
        shape = input_view(mconfig, dataset)
        num_outputs = dataset.num_classes or dataset.y_train.shape[1]
        models = []
        for k in range(config.restarts):
            model = build_model(
                mconfig, shape, num_outputs, generator=seeds(config.seed + k)["init"]
            )
            if config.pretrained:
                record = pre_initialize(model, config.pretrained, strict=False)
                if not record.loaded:
                    raise ConfigError(
                        f"pretrained: nothing in {config.pretrained} matches the model"
                    )
            models.append(model)
        params, buffers = stack_models(models)
        _, total = total_steps(config, len(splits.x_train))
        return cls(
            config,
            models[0],
            params,
            buffers,
            task=dataset.task,
            input_shape=shape,
            total=total,
            method=method,
            device=device,
        )

    # -- one epoch --------------------------------------------------------------------------

    def run_epoch(
        self,
        x_train: Tensor,
        y_train: Tensor,
        *,
        on_step: Callable[[Tensor], None] | None = None,
    ) -> dict[str, Tensor]:
        """One pass over ``(x_train, y_train)`` (on the trainer's device), ``total``-capped.

        Returns ``(N,)`` device tensors ``loss_sum`` and ``correct``, ``seen`` (examples, an
        int), ``losses`` ``(updates, N)`` and ``lrs`` (the lr after each update).
        ``on_step(losses)`` gets each update's ``(N,)`` mini-batch losses.
        """
        config, n = self.config, self.n
        size = len(x_train)
        per_epoch = math.ceil(size / config.batch_size)
        orders = torch.stack([torch.randperm(size, generator=g) for g in self.data_gens])
        orders = orders.to(self.device)  # (N or 1, size)
        shared = config.shared_data_order
        loss_sum = torch.zeros(n, device=self.device)
        correct = torch.zeros(n, dtype=torch.int64, device=self.device)
        step_losses, lrs = [], []
        seen = 0
        for i in range(per_epoch):
            if self.step >= self.total:
                break
            index = orders[:, i * config.batch_size : (i + 1) * config.batch_size]
            if shared:
                index = index[0]  # (batch,)
            x = x_train[index]  # (N, batch, ...) or (batch, ...)
            x = x.reshape(*index.shape, *self.input_shape)
            y = y_train[index]
            losses, output = self.update(x, y, shared=shared)
            step_losses.append(losses)
            lrs.append(self.optimizer.param_groups[0]["lr"])  # after the schedule, as loop.py
            batch = index.shape[-1]
            seen += batch
            loss_sum += losses * batch
            if self.task == "classification":
                target = y.expand(n, *y.shape) if shared else y
                correct += (output.argmax(dim=-1) == target).sum(dim=1)
            if on_step is not None:
                on_step(losses)
        return {
            "loss_sum": loss_sum,
            "correct": correct,
            "seen": seen,
            "losses": torch.stack(step_losses) if step_losses else torch.zeros(0, n),
            "lrs": lrs,
        }

    def update(self, x: Tensor, y: Tensor, *, shared: bool = False) -> tuple[Tensor, Tensor]:
        """One batched update on the mini-batch ``x``, ``y``; returns the ``(N,)`` losses
        (detached) and the ``(N, batch, outputs)`` outputs."""
        self.optimizer.zero_grad()
        output, new_buffers = self.forward(
            self.params, self.buffers, x, training=True, shared=shared
        )
        self.buffers = {k: v.detach() for k, v in new_buffers.items()}
        target = y.expand(self.n, *y.shape) if shared else y
        losses = per_restart_loss(output, target, self.task)  # (N,)
        # Summed: restart k's parameters only reach restart k's loss, so each gets its own
        # gradient (a NaN loss of one restart back-propagates ones, not NaN, to the others).
        losses.sum().backward()
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if self.config.grad_noise:
            self._add_gradient_noise(grads)
        self._check_finite(losses.detach(), grads)
        if self.clip_value is not None:
            for g in grads:
                g.clamp_(-self.clip_value, self.clip_value)
        if self.max_grad_norm is not None:
            coefficient = clip_coefficient(per_restart_norm(grads), self.max_grad_norm)  # (N,)
            for g in grads:
                g.mul_(coefficient.view(-1, *[1] * (g.dim() - 1)).to(g))
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.step += 1
        return losses.detach(), output.detach()

    def _add_gradient_noise(self, grads: Sequence[Tensor]) -> None:
        # Neelakantan et al. (2015), as loop.py adds it: each restart draws from its own
        # generator, parameter by parameter, what its sequential run would draw.
        config = self.config
        std = math.sqrt(config.grad_noise / (1 + self.step) ** config.grad_noise_gamma)
        draws = [
            [torch.randn(g.shape[1:], generator=gen, dtype=g.dtype) for g in grads]
            for gen in self.noise_gens
        ]
        for j, g in enumerate(grads):
            noise = torch.stack([d[j] for d in draws]).to(g.device)  # (N or 1, *shape)
            g.add_(noise * std)

    def _check_finite(self, losses: Tensor, grads: Sequence[Tensor]) -> None:
        # On the device, no host sync: the flags are read at the end of the epoch. A row's
        # gradient sum is NaN/Inf iff the row holds a NaN/Inf (or sums past float range,
        # which is divergence too): one read of the gradients instead of isfinite's two.
        sums = torch.stack([g.flatten(1).sum(dim=1, dtype=_wide(g.dtype)) for g in grads])
        finite = torch.isfinite(losses) & torch.isfinite(sums.sum(dim=0))
        newly = ~finite & (self.diverged_step < 0) & self.active
        self.diverged_step = torch.where(newly, self.step + 1, self.diverged_step)

    @property
    def diverged(self) -> list[int]:
        """Restarts whose loss or gradient has turned NaN/Inf (reading it syncs the device)."""
        return (self.diverged_step >= 0).nonzero().flatten().tolist()

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def outputs(self, x: Tensor, params=None, buffers=None) -> Tensor:
        """``(N, n, outputs)``: every restart's eval-mode outputs on ``x`` ``(n, ...)``."""
        params = self.params if params is None else params
        buffers = self.buffers if buffers is None else buffers
        chunk = max(32, 65536 // self.n)  # bounds the (N, chunk, width) activations
        parts = []
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk].reshape(-1, *self.input_shape)
            out, _ = self.forward(params, buffers, part, training=False, shared=True)
            parts.append(out)
        return torch.cat(parts, dim=1)

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``(N,)`` loss (and accuracy) of each restart's ``outputs`` against ``y``."""
        target = y.expand(self.n, *y.shape)
        result = {"loss": per_restart_loss(outputs, target, self.task)}
        if self.task == "classification":
            result["accuracy"] = (outputs.argmax(dim=-1) == target).float().mean(dim=1)
        return result

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "buffers": {k: v.cpu() for k, v in self.buffers.items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "data_gens": [g.get_state() for g in self.data_gens],
            "noise_gens": [g.get_state() for g in self.noise_gens],
            "step": self.step,
            "diverged_step": self.diverged_step.cpu(),
            "active": self.active.cpu(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(state["params"][k])
        self.buffers = {k: v.to(self.device) for k, v in state["buffers"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # saved with clipping moved out already
            group["max_grad_norm"] = group["clip_value"] = None
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        for gen, s in zip(self.data_gens, state["data_gens"], strict=True):
            gen.set_state(s)
        for gen, s in zip(self.noise_gens, state["noise_gens"], strict=True):
            gen.set_state(s)
        self.step = state["step"]
        self.diverged_step = state["diverged_step"].to(self.device)
        self.active = state["active"].to(self.device)


def per_restart_norm(grads: Sequence[Tensor]) -> Tensor:
    """``(N,)``: each restart's global 2-norm over all stacked ``(N, ...)`` tensors, computed
    as ``ravine.optim._math.global_norm`` computes one network's (float32 accumulation)."""
    norms = [torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=_wide(g.dtype)) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# The run: data, epochs, evaluation, checkpoints, reports
# --------------------------------------------------------------------------------------------


def train_restarts(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = None,
    method: str = "auto",
    replace: bool = False,
    stop_after_epoch: int | None = None,
) -> RestartsResult:
    """Train ``config.restarts`` independently initialized networks as one batched computation.

    Restart k reproduces ``train()`` with ``seed = config.seed + k`` (see the module doc).
    Resumes from ``out_dir``'s checkpoint of the same config, and ends with the parameters an
    uninterrupted run would have.

    Args:
        config: the run; ``restarts`` copies (1 is allowed). ``snapshots`` is not supported.
        out_dir: output folder (created).
        on_progress: called with ``{"step", "total", "epoch", "loss"}`` (the median restart's
            loss) after each update and ``{"step", "total", "epoch", "metrics"}`` after each
            epoch.
        device: where to train (``"cpu"``, ``"cuda"``, ...); default ``"cpu"``.
        method: ``"auto"``, ``"vmap"`` or ``"bmm"`` (see the module doc).
        replace: replace the run ``out_dir`` holds, if it holds another (as in ``train()``).
        stop_after_epoch: return after this epoch's checkpoint, as if killed (tests).

    Example::

        >>> from ravine.train import TrainConfig, train_restarts
        >>> result = train_restarts(TrainConfig(restarts=8, epochs=5), "runs/restarts")
        >>> result.summary["test_loss"]["median"], result.ensemble["accuracy"]  # doctest: +SKIP
    """
    if config.snapshots:
        raise ConfigError(
            "snapshots with restarts > 1 is not supported; train snapshot ensembles with "
            "restarts = 1"
        )
    if config.keep_weights:
        raise ConfigError("keep_weights with restarts > 1 is not supported; use restarts = 1")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    device = torch.device(device or getattr(config, "device", None) or "cpu")
    out = Path(out_dir)
    config_text = dump_toml(config.to_toml_tables())
    n = config.restarts

    splits = prepare_data(config)
    dataset = splits.dataset
    task = dataset.task
    trainer = RestartsTrainer.from_config(config, splits, method=method, device=device)
    x_train, y_train = splits.x_train.to(device), splits.y_train.to(device)
    held_out = {splits.val_name: (splits.x_val.to(device), splits.y_val.to(device))}
    if splits.val_name != "test":
        held_out["test"] = (splits.x_test.to(device), splits.y_test.to(device))
    val_key = f"{splits.val_name}_loss"
    # Only now, with everything validated: bad input leaves no folder behind, and a folder
    # to replace is emptied only for a run that can start.
    folder = claim_run_folder(out, config_text, replace=replace)
    try:
        torch.manual_seed(seeds(config.seed)["dropout"])  # dropout masks: global generator(s)
        history: list[dict[str, Any]] = []
        step_log: list[tuple[int, float, float, float, float]] = []  # step, lr, median, min, max
        best: dict[str, Any] | None = None
        if config.early_stopping:
            best = {
                "loss": torch.full((n,), math.inf, device=device),
                "epoch": torch.zeros(n, dtype=torch.int64, device=device),
                "params": {k: v.detach().clone() for k, v in trainer.params.items()},
                "buffers": {k: v.clone() for k, v in trainer.buffers.items()},
            }
        start_epoch, resumed_from = 0, None
        checkpoint_path = out / CHECKPOINT
        state, note = load_latest_checkpoint(checkpoint_path) if folder.resuming else (None, "")
        if note:
            warnings.warn(note, ResumeWarning, stacklevel=2)
        if state is None and folder.resuming and folder.owner.finished:
            raise ConfigError(
                f"{out} holds this run, finished, but its checkpoint is gone: there is nothing "
                "to resume and its results are intact; to train it again, replace it (--replace)"
            )
        if state is not None:
            trainer.load_state_dict(state["trainer"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            history, step_log = state["history"], [tuple(s) for s in state["steps"]]
            if best is not None:
                best = _to_device(state["best"], device)
            start_epoch = resumed_from = state["epoch"]
        folder.unfinish()
        atomic_write_text(out / "config.toml", config_text)

        total = trainer.total
        started = time.perf_counter()
        seconds_before = history[-1]["seconds"] if history else 0.0
        epoch = start_epoch
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if trainer.step >= total or not bool(trainer.active.any()):
                break

            def on_step(losses: Tensor, epoch: int = epoch) -> None:
                loss = _median(losses.tolist())  # a host sync per update: only with on_progress
                on_progress({"step": trainer.step, "total": total, "epoch": epoch, "loss": loss})

            stopped = (~trainer.active).nonzero().flatten().tolist()  # by early stopping
            stats = trainer.run_epoch(
                x_train, y_train, on_step=on_step if on_progress is not None else None
            )
            lr = trainer.optimizer.param_groups[0]["lr"]
            first = trainer.step - len(stats["lrs"]) + 1
            for i, (row, step_lr) in enumerate(
                zip(stats["losses"].tolist(), stats["lrs"], strict=True)
            ):
                step_log.append((first + i, step_lr, _median(row), *_range(row)))
            seen = stats["seen"]
            record: dict[str, Any] = {"epoch": epoch, "step": trainer.step}
            per_restart: dict[str, Tensor] = {"train_loss": stats["loss_sum"] / seen}
            if task == "classification":
                per_restart["train_accuracy"] = stats["correct"].double() / seen
            for name, (x, y) in held_out.items():
                for key, value in trainer.metrics(trainer.outputs(x), y).items():
                    per_restart[f"{name}_{key}"] = value
            # The keys of train()'s records hold the median over the restarts that are neither
            # diverged nor stopped, so that anything reading one run's metrics reads these;
            # "per_restart" holds the lists (None for NaN/Inf, and for a restart that early
            # stopping has stopped: its sequential run would have no such epoch).
            diverged = trainer.diverged
            record["per_restart"] = {}
            for key, value in per_restart.items():
                values = [None if k in stopped else v for k, v in enumerate(value.tolist())]
                record["per_restart"][key] = _json_floats(values)
                kept = [v for k, v in enumerate(values) if k not in diverged and v is not None]
                record[key] = _median(kept)
            record["diverged"] = diverged
            if config.early_stopping:
                record["stopped"] = stopped
            record["lr"] = lr
            record["seconds"] = seconds_before + time.perf_counter() - started
            history.append(record)
            if best is not None:
                _track_best(best, trainer, per_restart[val_key], epoch, config.early_stopping)
            if on_progress is not None:
                on_progress(
                    {"step": trainer.step, "total": total, "epoch": epoch, "metrics": record}
                )
            last = epoch == config.epochs or trainer.step >= total or not bool(trainer.active.any())
            if epoch % config.checkpoint_every == 0 or last:
                save_checkpoint(
                    {
                        "config": config_text,
                        "epoch": epoch,
                        "trainer": trainer.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device)
                        if device.type == "cuda"
                        else None,
                        "history": history,
                        "steps": [list(s) for s in step_log],
                        "best": _to_device(best, "cpu") if best is not None else None,
                    },
                    checkpoint_path,
                    keep_previous=True,
                )
                _write_logs(out, history, step_log)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and not last:
                return _result(out, trainer, history, [], {}, None, resumed_from)

        params = {k: v.detach() for k, v in trainer.params.items()}
        buffers = dict(trainer.buffers)
        if best is not None:
            # Early stopping hands back each restart's best held-out state, as train() does.
            params, buffers = best["params"], best["buffers"]
        diverged = trainer.diverged
        for k in range(n):  # the parameters themselves may have overflowed without a NaN grad
            if k not in diverged and not all(bool(p[k].isfinite().all()) for p in params.values()):
                diverged.append(k)
        diverged.sort()

        final_metrics: dict[str, Tensor] = {}
        test_outputs = None
        for name, (x, y) in {"train": (x_train, y_train), **held_out}.items():
            outputs = trainer.outputs(x, params, buffers)
            if name == "test":
                test_outputs = outputs
            for key, value in trainer.metrics(outputs, y).items():
                final_metrics[f"{name}_{key}"] = value
        final = [{key: float(values[k]) for key, values in final_metrics.items()} for k in range(n)]
        healthy = [k for k in range(n) if k not in diverged]
        summary = _summarize(final, healthy, val_key)
        ensemble = None
        if healthy and test_outputs is not None:
            loss_fn = loss_function(dataset)
            members = [test_outputs[k] for k in healthy]
            ensemble = ensemble_metrics(members, held_out["test"][1], loss_fn)
            ensemble["members"] = len(members)
        result = RestartsResult(
            out,
            trainer.model,
            {k: v.detach().cpu() for k, v in params.items()},
            {k: v.cpu() for k, v in buffers.items()},
            history,
            final,
            summary,
            ensemble,
            diverged,
            trainer.step,
            trainer.method,
            resumed_from,
        )
        _write_final(out, config, result, splits, step_log, trainer, best)
        folder.finish()
        return result
    finally:
        folder.release()


def _result(out, trainer, history, final, summary, ensemble, resumed_from) -> RestartsResult:
    return RestartsResult(
        out,
        trainer.model,
        {k: v.detach().cpu() for k, v in trainer.params.items()},
        {k: v.cpu() for k, v in trainer.buffers.items()},
        history,
        final,
        summary,
        ensemble,
        trainer.diverged,
        trainer.step,
        trainer.method,
        resumed_from,
    )


def _track_best(best, trainer, val_loss: Tensor, epoch: int, patience: int) -> None:
    # Per restart, as each sequential run would: a better held-out loss replaces its best
    # state; a restart that has gone `patience` epochs without one stops (its later epochs
    # are still computed with the others, but no longer count).
    improved = (val_loss < best["loss"]) & trainer.active
    best["loss"] = torch.where(improved, val_loss, best["loss"])
    best["epoch"] = torch.where(improved, epoch, best["epoch"])
    for store, current in ((best["params"], trainer.params), (best["buffers"], trainer.buffers)):
        for k, v in current.items():
            mask = improved.view(-1, *[1] * (v.dim() - 1))
            store[k] = torch.where(mask, v.detach(), store[k])
    trainer.active = trainer.active & (epoch - best["epoch"] < patience)


def _summarize(final: list[dict[str, float]], healthy: list[int], val_key: str) -> dict:
    summary: dict[str, Any] = {"restarts": len(final), "diverged": len(final) - len(healthy)}
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
    summary["best_restart"] = min(healthy, key=lambda k: final[k][val_key])
    summary["selected_by"] = val_key
    return summary


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


def _json_floats(values: list[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def _strict(tree: Any) -> Any:
    """``tree`` with NaN/Inf floats as None: strict JSON, which has no NaN."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    if isinstance(tree, dict):
        return {k: _strict(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_strict(v) for v in tree]
    return tree


def _to_device(tree: Any, device) -> Any:
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


def _write_logs(out: Path, history, step_log) -> None:
    # Rewritten whole from the checkpointed history, so a resumed run's logs have no
    # duplicated or missing lines.
    lines = "".join(json.dumps(_strict(r)) + "\n" for r in history)
    atomic_write_text(out / "metrics.jsonl", lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", "lr", "loss_median", "loss_min", "loss_max"])
    writer.writerows(step_log)
    atomic_write_text(out / "steps.csv", buffer.getvalue())


def _write_final(out, config, result: RestartsResult, splits, step_log, trainer, best) -> None:
    _write_logs(out, result.history, step_log)
    n = result.restarts
    summary = result.summary
    chosen = summary.get("best_restart", 0)
    save_checkpoint(
        {
            "model": result.state_dict(chosen),  # a single network: the best restart's
            "best_restart": chosen,
            "stacked": {"params": result.params, "buffers": result.buffers},  # (N, ...)
            "restarts": n,
            "diverged": result.diverged,
            "standardizer": splits.standardizer.state_dict() if splits.standardizer else None,
            "config": dump_toml(config.to_toml_tables()),
        },
        out / "model.pt",
    )
    diverged_step = trainer.diverged_step.tolist()
    rows = []
    for k, metrics in enumerate(result.final):
        row: dict[str, Any] = {
            "restart": k,
            "seed": config.seed + k,
            "diverged": k in result.diverged,
            "diverged_at_step": diverged_step[k] if diverged_step[k] >= 0 else None,
        }
        if best is not None:
            row["best_epoch"] = int(best["epoch"][k])
        row.update({key: v if math.isfinite(v) else None for key, v in metrics.items()})
        rows.append(row)
    report = {
        "restarts": n,
        "method": result.method,
        "shared_data_order": config.shared_data_order,
        "epochs": len(result.history),
        "steps": result.steps,
        "seconds": result.history[-1]["seconds"] if result.history else 0.0,
        "diverged": result.diverged,
        "summary": summary,
        "ensemble": result.ensemble,
        "per_restart": rows,
    }
    atomic_write_text(out / "restarts.json", json.dumps(_strict(report), indent=2))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "restarts.csv", buffer.getvalue())
    from ravine.report.restarts import plot_restart_losses
    from ravine.report.training import plot_training_curves

    title = f"{config.dataset}: {config.model}, {n} restarts ({config.optimizer})"
    plot_training_curves(result.history, out / "curves.png", title=f"{title}, medians")

    losses = {
        split: [m.get(f"{split}_loss", math.nan) for m in result.final]
        for split in ("train", splits.val_name, "test")
        if f"{split}_loss" in result.final[0]
    }
    plot_restart_losses(losses, out / "restarts.png", diverged=result.diverged, title=title)
