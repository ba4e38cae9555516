"""Where batches of trials run: in this process (the default), or as tasks on a Ray cluster.

An executor has ``parallel`` (how many batches may be in flight), ``submit(job, study,
on_progress)`` and ``wait(pending) -> the first finished``. Every batch writes its trials'
reports and results straight to the study's storage, which is what makes several workers
(and a crashed and restarted driver) agree on one study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ravine.study.tune import BatchJob, evaluate_batch

__all__ = ["EXECUTORS", "Local", "Ray"]

EXECUTORS = ("local", "ray")


class Local:
    """Batches run here, one after another (each batch is already one batched computation)."""

    parallel = 1

    def submit(self, job: BatchJob, study: Any, on_progress=None) -> BatchJob:
        evaluate_batch(job, study, on_progress)
        return job

    def wait(self, pending: list[BatchJob]) -> BatchJob:
        return pending[0]


@dataclass
class _Submitted:
    job: BatchJob
    ref: Any

    @property
    def numbers(self) -> list[int]:
        return self.job.numbers


class Ray:
    """Batches run as Ray tasks, ``parallel`` at a time, on the cluster at ``address``
    (``None``: start a local one on this machine; ``"auto"``: the cluster this machine joined).

    The study's storage must be reachable from every worker: SQLite in the output folder works
    on one machine; on a real cluster, pass ``--storage postgresql://...``.
    """

    def __init__(
        self, address: str | None = None, *, parallel: int | None = None, cpus_per_batch: int = 1
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                'the ray executor needs Ray: pip install -e ".[ray]" (or pip install ray)'
            ) from None
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                # A private local cluster on loopback, sized to this machine.
                options.update(num_cpus=parallel or None, _node_ip_address="127.0.0.1")
            ray.init(address=address, **options)
        self._ray = ray
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.parallel = parallel or max(1, cpus // cpus_per_batch)
        self._remote = ray.remote(num_cpus=cpus_per_batch)(_evaluate_remote)
        self._cpus = cpus_per_batch

    def submit(self, job: BatchJob, study: Any, on_progress=None) -> _Submitted:
        return _Submitted(job, self._remote.remote(job, self._cpus))

    def wait(self, pending: list[_Submitted]) -> _Submitted:
        ready, _ = self._ray.wait([p.ref for p in pending], num_returns=1)
        done = next(p for p in pending if p.ref == ready[0])
        self._ray.get(done.ref)  # re-raises a worker's error here
        return done


def _evaluate_remote(job: BatchJob, threads: int) -> list[str]:
    import torch

    torch.set_num_threads(threads)  # one batch per CPU: no oversubscription
    return evaluate_batch(job)
