"""The trainer: one loop for one network or for N members trained as one batched computation.

A run trains N >= 1 *members* of one architecture. A member is a seed and, optionally, its own
optimizer hyperparameters: restarts are members that differ only in seed, a batch of tuning
trials members that differ in hyperparameters. One member trains as the plain ``nn.Module``
(callbacks and instruments see the network as it is); several train as one computation over
stacked ``(N, ...)`` parameters (:mod:`ravine.train.stacked`): every update is one batched
forward, one backward of the sum of the N losses (member k's parameters only reach member k's
loss), and one step of one ravine optimizer whose param group holds ``members=N`` — per-member
hyperparameters, step counts, gradient clipping and NaN/Inf refusal live in the optimizer
(:mod:`ravine.optim.members`).

Member k is the run a one-member :func:`train` would do with its seed and hyperparameters: the
same initialization (``seeds(seed)["init"]``), the same data order (one ``randperm`` per epoch
from ``seeds(seed)["data"]``), the same gradient noise, the same schedule (stepped once per
update), the same early stopping; ``tests/test_members.py`` checks that it ends with that
run's parameters (float32 rounding). With ``shared_data_order=True`` every member uses the
first member's data order and gradient noise, so only initialization and hyperparameters
differ. All members share one train/validation split, drawn from ``config.seed``: members
compared or ensembled on held-out data are held out on the same examples. Dropout masks are
drawn for all members at once (see :mod:`ravine.train.stacked`), reproducibly, but not as N
one-member runs would draw them.

Members leave the batch — *retire* — when they diverge (their first refused step, unless the
optimizer's ``nonfinite`` is ``"skip"``: then they go on as a one-member run would), when
early stopping stops them, or when ``on_epoch`` prunes them (a tuning study). A retired
member's rows are frozen from that step (its later gradients are poisoned so the optimizer
refuses them, without a host sync) and removed at the end of the epoch: it stops costing
compute, and the others continue exactly as before.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ravine.optim import make_optimizer
from ravine.problems import build_model
from ravine.problems.models import pre_initialize, stack_models
from ravine.train.build import (
    Splits,
    input_view,
    loss_function,
    make_run_schedule,
    model_config,
    seeds,
    total_steps,
)
from ravine.train.config import ConfigError, TrainConfig
from ravine.train.stacked import member_state_dict, per_member_loss, stacked_forward
from ravine.train.user import build_user_model, check_stackable

_LOG = logging.getLogger("ravine.train")
_AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}

__all__ = [
    "CHECKPOINT",
    "Member",
    "MembersResult",
    "ResumeWarning",
    "TrainResult",
    "Trainer",
    "restart_members",
]

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Member:
    """One network of a run: its seed, and the optimizer hyperparameters it sets on top of
    the config's (``{"lr": 3e-3, "betas": (0.9, 0.99)}``)."""

    seed: int
    optimizer_args: Mapping[str, Any] = field(default_factory=dict)


def restart_members(config: TrainConfig) -> list[Member]:
    """Restarts: ``config.restarts`` members with seeds ``config.seed + k``."""
    return [Member(config.seed + k) for k in range(config.restarts)]


class ResumeWarning(UserWarning):
    """A run resumed from an older checkpoint than its newest (which was damaged)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a one-network run returns (everything is also on disk in ``out_dir``)."""

    out_dir: Path | None
    model: nn.Module
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    final: dict[str, float]  # held-out and test metrics of the returned model
    ensemble: dict[str, float] | None  # snapshot ensemble's test metrics, when snapshots > 0
    steps: int  # updates done
    resumed_from_epoch: int | None  # the checkpoint's epoch, when the run resumed


@dataclass
class MembersResult:
    """What a run of N members returns (on disk too, when it has an ``out_dir``)."""

    out_dir: Path | None
    model: nn.Module  # the architecture (its own weights are not the members'; see model_of)
    members: list[Member]
    params: dict[str, Tensor]  # name -> (N, *shape) final parameters
    buffers: dict[str, Tensor]  # name -> (N, *shape) final buffers (batch-norm statistics)
    history: list[dict[str, Any]]  # one record per epoch, as in metrics.jsonl
    final: list[dict[str, float]]  # per member, at the end, eval mode: train/val/test metrics
    summary: dict[str, Any]  # per metric: best / median / worst / mean / std over members
    ensemble: dict[str, float] | None  # the members' averaged softmax on the test split
    diverged: list[int]  # members whose loss or gradient turned NaN/Inf
    retired: dict[int, dict[str, Any]]  # member -> {"reason", "epoch", "step"} if it left early
    steps: int  # updates done
    method: str  # "module", "bmm" or "vmap"
    resumed_from_epoch: int | None  # the checkpoint's epoch, when the run resumed

    @property
    def restarts(self) -> int:
        return len(self.members)

    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s state dict, loadable into ``build_model(...)`` of the config."""
        return member_state_dict(self.model, self.params, self.buffers, k)

    def model_of(self, k: int) -> nn.Module:
        """A standalone ``nn.Module`` (eval mode) holding member ``k``'s final weights."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.state_dict(k))
        return model.eval()


# --------------------------------------------------------------------------------------------
# The networks: one plain module, or N stacked members
# --------------------------------------------------------------------------------------------


class _Module:
    """One member, as the plain ``nn.Module``: outputs gain a leading member dimension."""

    method = "module"

    def __init__(self, model: nn.Module, device: torch.device, compile: bool = False) -> None:
        self.model = model.to(device)
        if compile:
            self.model.compile()  # in place: state-dict keys and callbacks see the module as is
        # Walking the module tree costs more than a small model's update: done once.
        self._parameters = list(self.model.parameters())

    def parameters(self) -> list[Tensor]:
        return self._parameters

    def train_outputs(self, x: Tensor, shared: bool) -> Tensor:
        """``(batch, outputs)`` for ``x`` ``(batch, ...)``: no member dimension in the graph."""
        if not self.model.training:  # (train() recurses over every module: only when needed)
            self.model.train()
        return self.model(x)

    @torch.no_grad()
    def outputs(self, x: Tensor, input_shape, state=None) -> Tensor:
        model = self.model
        if state is not None:
            model = copy.deepcopy(model)
            model.load_state_dict(state)
        was_training = model.training
        model.eval()
        out = torch.cat(
            [model(x[i : i + 4096].reshape(-1, *input_shape)) for i in range(0, len(x), 4096)]
        )
        model.train(was_training)
        return out.unsqueeze(0)

    def member_shape(self, grad: Tensor) -> torch.Size:
        return grad.shape

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load(self, state: Mapping[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def rows(self, state: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
        return {name: v.detach().clone() for name, v in state.items()}


class _Stacked:
    """N members as stacked ``(N, ...)`` tensors with a batched forward."""

    def __init__(
        self, models: Sequence[nn.Module], method: str, device: torch.device, compile: bool = False
    ) -> None:
        params, buffers = stack_models(models)
        self.model = models[0]  # the architecture
        self.params = {k: v.to(device).requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        try:
            self.forward, self.method = stacked_forward(self.model, method)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if compile:
            self.forward = torch.compile(self.forward)

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def train_outputs(self, x: Tensor, shared: bool) -> Tensor:
        output, new_buffers = self.forward(
            self.params, self.buffers, x, training=True, shared=shared
        )
        self.buffers = {k: v.detach() for k, v in new_buffers.items()}
        return output

    @torch.no_grad()
    def outputs(self, x: Tensor, input_shape, state=None) -> Tensor:
        """``(N, n, outputs)``: every member's eval-mode outputs on ``x`` ``(n, ...)``."""
        params, buffers = (self.params, self.buffers) if state is None else state
        n = next(iter(params.values())).shape[0]
        chunk = max(32, 65536 // n)  # bounds the (N, chunk, width) activations
        parts = []
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk].reshape(-1, *input_shape)
            out, _ = self.forward(params, buffers, part, training=False, shared=True)
            parts.append(out)
        return torch.cat(parts, dim=1)

    def member_shape(self, grad: Tensor) -> torch.Size:
        return grad.shape[1:]

    def state(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return (
            {k: v.detach().clone() for k, v in self.params.items()},
            {k: v.clone() for k, v in self.buffers.items()},
        )

    def load(self, state) -> None:
        params, buffers = state
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(params[k])
        self.buffers = {
            k: v.to(next(iter(self.params.values())).device) for k, v in buffers.items()
        }

    def keep(self, rows: Tensor) -> None:
        # The optimizer has rebound the parameters' data already (keep_members).
        self.buffers = {k: v[rows.to(v.device)] for k, v in self.buffers.items()}


# --------------------------------------------------------------------------------------------
# The trainer: state of the members and the update (no files, no epochs' bookkeeping)
# --------------------------------------------------------------------------------------------


class Trainer:
    """N members' state and the batched update; :func:`train` adds epochs, evaluation, files.

    ``ids`` maps the current rows to member indices: it shrinks as members retire.
    """

    def __init__(
        self,
        config: TrainConfig,
        splits: Splits,
        members: Sequence[Member],
        *,
        method: str = "auto",
        device: torch.device | str = "cpu",
        compile: bool = False,
        model: Callable[..., nn.Module] | None = None,
    ) -> None:
        """``model``: a factory of the user's network (:mod:`ravine.train.user`) instead of
        the config's; ``compile``: ``torch.compile`` the forward."""
        if not members:
            raise ConfigError("a run needs at least one member")
        self.config, self.members = config, list(members)
        self.device = torch.device(device)
        dataset = splits.dataset
        self.task = dataset.task
        self._loss_fn = loss_function(dataset)
        if model is None:
            mconfig = model_config(config)
            self.input_shape = input_view(mconfig, dataset)
        else:
            self.input_shape = tuple(dataset.input_shape)
        num_outputs = dataset.num_classes or dataset.y_train.shape[1]
        models = []
        for member in self.members:
            init_seed = seeds(member.seed)["init"]
            if model is None:
                network = build_model(mconfig, self.input_shape, num_outputs, generator=init_seed)
            else:
                try:
                    network = build_user_model(model, member.seed, init_seed)
                except ValueError as error:
                    raise ConfigError(str(error)) from None
            if config.pretrained:
                try:
                    record = pre_initialize(network, config.pretrained, strict=False)
                except Exception as error:  # a file a user names breaks in many ways
                    raise ConfigError(
                        f"pretrained: {config.pretrained} is not a checkpoint ravine can read "
                        f"({' '.join(str(error).split())[:200] or type(error).__name__})"
                    ) from None
                if not record.loaded:
                    raise ConfigError(
                        f"pretrained: nothing in {config.pretrained} matches the model"
                    )
            models.append(network)
        n = len(models)
        if model is not None and n > 1:
            x = splits.x_train[:2].reshape(-1, *self.input_shape)
            check_stackable(models[0], x, n, lambda m: stacked_forward(m, method))
        if compile:
            _LOG.info("compiling the model with torch.compile: the first updates take longer")
        if n == 1 and method in ("auto", "module"):
            self.net: _Module | _Stacked = _Module(models[0], self.device, compile)
        else:
            self.net = _Stacked(models, method, self.device, compile)
        self.method = self.net.method
        # Mixed precision: the forward (and the loss) under autocast; parameters, gradients
        # and optimizer state stay float32. fp16 needs a loss scale against underflow: one
        # GradScaler, whose skip-on-overflow reads a flag per update (torch's; bf16 has none).
        self.precision = config.precision
        dtype = _AUTOCAST.get(self.precision)
        self._autocast: Callable[[], Any] = (
            (lambda: torch.autocast(self.device.type, dtype=getattr(torch, dtype)))
            if dtype is not None
            else contextlib.nullcontext
        )
        if self.precision == "fp16" and n > 1:
            raise ConfigError(
                "precision fp16 with several members: one loss scale would skip every "
                "member's step when one overflows; use bf16 (no loss scale) or restarts = 1"
            )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        # One network in float32 takes the textbook path: the update itself and the two values
        # the epoch's metrics need, nothing else (benchmarks/train_throughput.py).
        self._plain = not self.stacked and self.precision == "fp32"
        self.architecture = models[0] if n > 1 else copy.deepcopy(models[0])
        _, self.total = total_steps(config, len(splits.x_train))
        if config.snapshots:
            self.total = self.total // config.snapshots * config.snapshots
        self.optimizer = _optimizer(
            config, self.members, self.net.parameters(), stacked=n > 1 or self.method != "module"
        )
        self.schedule = make_run_schedule(config, self.optimizer, self.total)
        policy = {**config.optimizer_args}.get("nonfinite", "raise")
        self.retire_diverged = policy != "skip"  # "skip" members go on, as a one-member run

        # Members of one seed draw the same data order and noise (a batch of tuning trials):
        # one stream serves them all, and their mini-batch is gathered once.
        shared = config.shared_data_order or len({m.seed for m in self.members}) == 1
        first = self.members[0].seed
        run_seeds = [first if shared else m.seed for m in self.members]
        self.data_gens = [torch.Generator().manual_seed(seeds(s)["data"]) for s in run_seeds]
        self.noise_gens = [torch.Generator().manual_seed(seeds(s)["noise"]) for s in run_seeds]
        if shared:  # one stream, as the first member draws it
            self.data_gens, self.noise_gens = self.data_gens[:1], self.noise_gens[:1]
        self.step = 0
        self.ids = list(range(n))
        self.diverged_step = torch.full((n,), -1, dtype=torch.int64, device=self.device)

    @property
    def n(self) -> int:
        """Members still training (rows)."""
        return len(self.ids)

    @property
    def stacked(self) -> bool:
        return isinstance(self.net, _Stacked)

    # -- one epoch --------------------------------------------------------------------------

    def run_epoch(
        self,
        x_train: Tensor,
        y_train: Tensor,
        *,
        on_step: Callable[[Tensor], None] | None = None,
        after_update: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """One pass over ``(x_train, y_train)`` (on the trainer's device), ``total``-capped.

        Returns ``(N,)`` device tensors ``loss_sum`` and ``correct``, ``seen`` (examples),
        ``losses`` ``(updates, N)`` and ``lrs`` (the lr after each update). ``on_step(losses)``
        gets each update's mini-batch losses (``(N,)``, or ``()`` for one network),
        ``after_update(step)`` the step count.
        """
        config, n = self.config, self.n
        size = len(x_train)
        x_train = x_train.reshape(size, *self.input_shape)  # (once: a view per update costs)
        per_epoch = math.ceil(size / config.batch_size)
        draws = [torch.randperm(size, generator=g) for g in self.data_gens]
        orders = (draws[0][None] if len(draws) == 1 else torch.stack(draws)).to(self.device)
        # orders: (N or 1, size)
        shared = len(self.data_gens) == 1 and n > 1
        one_order = orders[0] if shared or not self.stacked else None  # (size,)
        # Per update only what the epoch's metrics need, on the device: the (N,) losses and
        # the ([N,] batch) predicted classes; sums and comparisons wait for the epoch's end.
        step_losses: list[Tensor] = []
        predictions: list[Tensor] = []
        lrs: list[float | Tensor] = []  # read once, at the end of the epoch
        seen, batch_size = 0, config.batch_size
        sizes: list[int] = []  # examples per update, for the epoch's mean loss
        group = self.optimizer.param_groups[0]
        for i in range(per_epoch):
            if self.step >= self.total:
                break
            rows = slice(i * batch_size, (i + 1) * batch_size)
            index = one_order[rows] if one_order is not None else orders[:, rows]
            x = x_train[index]  # ([N,] batch, ...)
            y = y_train[index]
            losses, predicted = self.update(x, y, shared=shared)
            step_losses.append(losses)
            lr = group["lr"]  # after the schedule; a tensor is copied (a schedule writes into it)
            lrs.append(lr.detach().clone() if isinstance(lr, Tensor) else lr)
            sizes.append(index.shape[-1])
            seen += sizes[-1]
            if predicted is not None:
                predictions.append(predicted)
            if after_update is not None:
                after_update(self.step)
            if on_step is not None:
                on_step(losses)
        if step_losses:
            losses = torch.stack(step_losses).view(-1, n)  # (updates, N)
            weights = torch.tensor(sizes, dtype=losses.dtype).to(self.device, non_blocking=True)
            loss_sum = weights @ losses  # (N,): each update's mean loss times its batch
        else:
            losses = torch.zeros(0, n, device=self.device)
            loss_sum = torch.zeros(n, device=self.device)
        correct = torch.zeros(n, dtype=torch.int64, device=self.device)
        if predictions:
            targets = y_train[orders[:, :seen]]  # (N or 1, seen): the examples, in order
            predicted = torch.cat(predictions, dim=-1).view(-1, seen)  # (N, seen)
            correct = (predicted == targets).sum(dim=1)
        return {
            "loss_sum": loss_sum,
            "correct": correct,
            "seen": seen,
            "losses": losses,
            "lrs": [_median_lr(lr) for lr in lrs],
        }

    def _plain_update(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`update` of one network in float32, as a hand-written loop does it."""
        optimizer, model = self.optimizer, self.net.model
        optimizer.zero_grad()
        if not model.training:  # (train() recurses over every module: only when needed)
            model.train()
        output = model(x)
        loss = self._loss_fn(output, y)
        loss.backward()
        if self.config.grad_noise:
            self._add_gradient_noise([p.grad for p in self.net.parameters() if p.grad is not None])
        optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.step += 1
        predicted = output.argmax(dim=-1) if self.task == "classification" else None
        return loss.detach(), predicted

    def update(self, x: Tensor, y: Tensor, *, shared: bool = False) -> tuple[Tensor, Tensor | None]:
        """One update on the mini-batch; returns the ``(N,)`` losses (detached; ``()`` for one
        network) and, for classification, the predicted classes ``(N, batch)`` (``(batch,)``
        for one network).
        ``x``: ``(N, batch, ...)``, or ``(batch, ...)`` when ``shared`` and for one network
        (``y`` likewise)."""
        # Nothing here reads a device value back to the host (tests/test_device.py counts):
        # on an accelerator the update is queued while the host prepares the next one.
        if self._plain:
            return self._plain_update(x, y)
        self.optimizer.zero_grad()
        with self._autocast():
            output = self.net.train_outputs(x, shared)
        output = _widened(output)  # the loss in float32 whatever the precision
        if self.stacked:
            target = y.expand(self.n, *y.shape) if shared else y
            losses = per_member_loss(output, target, self.task)  # (N,)
            # Summed: member k's parameters only reach member k's loss, so each gets its own
            # gradient (a NaN loss of one member back-propagates ones, not NaN, to the others).
            loss = losses.sum()
        else:  # one network: the loss as a textbook loop computes it (one fused kernel)
            loss = self._loss_fn(output, y)
            losses = loss.detach()  # () here; (1,) once the epoch's losses are stacked
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # noise and clipping act on the true gradient
        if self.config.grad_noise or self.stacked:
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            if self.config.grad_noise:
                self._add_gradient_noise(grads)
            if self.stacked:
                self._freeze_retired(grads)
        if scaler is not None:
            scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            self.optimizer.step()
        if self.stacked:
            refused = self.optimizer.refused_members
            bad = ~torch.isfinite(losses.detach())
            if refused is not None:
                bad = bad | refused.to(bad.device)
            newly = bad & (self.diverged_step < 0)
            self.diverged_step = torch.where(newly, self.step + 1, self.diverged_step)
        if self.schedule is not None:
            self.schedule.step()
        self.step += 1
        # (argmax records nothing for autograd: integers have no gradient)
        predicted = output.argmax(dim=-1) if self.task == "classification" else None
        return (losses.detach() if self.stacked else losses), predicted

    def _freeze_retired(self, grads: Sequence[Tensor]) -> None:
        # A member that has diverged stops where a one-member run would have stopped: its
        # later gradients are made NaN, so the optimizer refuses its rows (state and step
        # count untouched) — on the device, without reading the flags back to the host.
        if not self.retire_diverged:
            return
        dead = self.diverged_step >= 0  # (N,)
        # On a CPU reading the flags costs nothing: skip the pass when none died. (Not when
        # the optimizer runs its accelerator path on the CPU: tests count the reads.)
        host = dead.device.type == "cpu" and not getattr(self.optimizer, "_force_guarded", False)
        if host and not bool(dead.any()):
            return
        for g in grads:
            g.masked_fill_(dead.view(-1, *[1] * (g.dim() - 1)), math.nan)

    def _add_gradient_noise(self, grads: Sequence[Tensor]) -> None:
        # Neelakantan et al. (2015): g += N(0, eta / (1 + t)^gamma). Each member draws from
        # its own generator, parameter by parameter, what its one-member run would draw.
        config = self.config
        std = math.sqrt(config.grad_noise / (1 + self.step) ** config.grad_noise_gamma)
        draws = [
            [torch.randn(self.net.member_shape(g), generator=gen, dtype=g.dtype) for g in grads]
            for gen in self.noise_gens
        ]
        for j, g in enumerate(grads):
            # (N or 1, *shape) over stacked members, the parameter's shape for one module
            noise = torch.stack([d[j] for d in draws]) if self.stacked else draws[0][j]
            g.add_(noise.to(g.device) * std)

    def lr(self) -> float:
        """The first param group's lr (the median member's, when members differ)."""
        return _median_lr(self.optimizer.param_groups[0]["lr"])

    def check_finite(self) -> None:
        """Raise the :class:`~ravine.optim.NonFiniteGradientError` of a step refused on the
        device whose check was deferred (the sync-free path raises it one step later, or
        here: the loop calls this at the end of every epoch, before a checkpoint)."""
        check = getattr(self.optimizer, "check_finite", None)
        if check is not None:
            check()

    @property
    def diverged(self) -> list[int]:
        """Rows whose loss or gradient turned NaN/Inf (reading it syncs the device)."""
        return (self.diverged_step >= 0).nonzero().flatten().tolist()

    # -- evaluation ---------------------------------------------------------------------------

    def outputs(self, x: Tensor, state=None) -> Tensor:
        """``(N, n, outputs)``: every row's eval-mode outputs on ``x`` ``(n, ...)``."""
        with self._autocast():
            return _widened(self.net.outputs(x, self.input_shape, state))

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``(N,)`` loss (and accuracy) of each row's ``outputs`` against ``y``."""
        target = y.expand(outputs.shape[0], *y.shape)
        result = {"loss": per_member_loss(outputs, target, self.task)}
        if self.task == "classification":
            result["accuracy"] = (outputs.argmax(dim=-1) == target).float().mean(dim=1)
        return result

    # -- retiring members -----------------------------------------------------------------

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only the rows ``rows`` (in order): the others stop costing compute."""
        if not self.stacked:
            raise ValueError("a one-member run has nothing to keep")
        index = torch.tensor(list(rows), dtype=torch.long)
        self.optimizer.keep_members(index)
        if self.schedule is not None:
            # Closed-form schedules scale each group's initial lr, which keep_members indexed.
            self.schedule.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        self.net.keep(index)
        if len(self.data_gens) > 1:
            self.data_gens = [self.data_gens[r] for r in rows]
            self.noise_gens = [self.noise_gens[r] for r in rows]
        self.diverged_step = self.diverged_step[index.to(self.device)]
        self.ids = [self.ids[r] for r in rows]

    def retire_all(self) -> None:
        """Every member has left: nothing trains any more."""
        self.ids = []
        self.diverged_step = self.diverged_step[:0]

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.stacked:
            params, buffers = self.net.state()
            network = {"params": to_cpu(params), "buffers": to_cpu(buffers)}
        else:
            network = {"model": self.net.model.state_dict()}
        return {
            **network,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "data_gens": [g.get_state() for g in self.data_gens],
            "noise_gens": [g.get_state() for g in self.noise_gens],
            "step": self.step,
            "ids": list(self.ids),
            "diverged_step": self.diverged_step.cpu(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.stacked and list(state["ids"]) != self.ids:
            self.keep([self.ids.index(i) for i in state["ids"]])  # the members that had left
        if self.stacked:
            self.net.load((state["params"], state["buffers"]))
        else:
            self.net.load(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        for gen, s in zip(self.data_gens, state["data_gens"], strict=True):
            gen.set_state(s)
        for gen, s in zip(self.noise_gens, state["noise_gens"], strict=True):
            gen.set_state(s)
        self.step = state["step"]
        self.diverged_step = state["diverged_step"].to(self.device)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _widened(output: Tensor) -> Tensor:
    # Autocast's half-precision outputs to float32; float32 and float64 stay as they are.
    return output.float() if output.dtype in (torch.bfloat16, torch.float16) else output


def _median_lr(lr: float | Tensor) -> float:
    if isinstance(lr, Tensor):
        return float(lr.median()) if lr.numel() > 1 else float(lr)
    return float(lr)


def _optimizer(config: TrainConfig, members: Sequence[Member], params, *, stacked: bool):
    """The run's optimizer: members' differing hyperparameters become per-member values."""
    merged = [{**config.optimizer_args, **m.optimizer_args} for m in members]
    try:
        if not stacked:
            return make_optimizer(config.optimizer, params, **merged[0])
        args: dict[str, Any] = {}
        for key in dict.fromkeys(k for m in merged for k in m):
            values = [m.get(key, _default(config.optimizer, key)) for m in merged]
            args[key] = _per_member(key, values)
        args["nonfinite"] = "skip"  # per member: see Trainer.retire_diverged
        return make_optimizer(config.optimizer, params, members=len(members), **args)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer: {error}") from None


def _per_member(key: str, values: list[Any]) -> Any:
    first = values[0]
    if all(_same(v, first) for v in values):
        return first
    if key == "betas":
        return tuple(
            torch.tensor([float(v[i]) for v in values], dtype=torch.float64) for i in (0, 1)
        )
    if any(isinstance(v, bool | str) or v is None for v in values):
        raise ValueError(
            f"{key} must be the same for every member (it selects the update rule), got {values!r}"
        )
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _default(optimizer: str, key: str) -> Any:
    import inspect

    from ravine.optim.registry import optimizer_class

    for klass in optimizer_class(optimizer).__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(key)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise ValueError(f"unknown hyperparameter {key!r} for optimizer {optimizer!r}")


def to_cpu(tree: Any) -> Any:
    """Tensors in nested dicts / lists / tuples, detached on the host (for checkpoints)."""
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def to_device(tree: Any, device) -> Any:
    """Tensors in nested dicts / lists / tuples, moved to ``device``."""
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return type(tree)(to_device(v, device) for v in tree)
    return tree
