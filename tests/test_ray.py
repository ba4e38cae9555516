"""Studies on Ray: a local cluster on this machine (loopback only) runs batches of trials as
Ray tasks, all writing to one Optuna storage, and gives the trials and results the local
executor gives with the same seeds."""

from __future__ import annotations

import itertools

import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra [ray]; CI installs it")

from ravine.study.space import Range  # noqa: E402
from ravine.study.study import StudyConfig, run_study  # noqa: E402
from ravine.study.tune import TuneConfig, run_tune  # noqa: E402
from ravine.train import TrainConfig  # noqa: E402

CONFIG = TuneConfig(
    train=TrainConfig(epochs=2, batch_size=128, val_fraction=0.2),
    space={"lr": Range(1e-4, 1e-1, log=True)},
    trials=6,
    batch=2,
    sampler="qmc",  # its points do not depend on which trials finished first
)


@pytest.fixture(scope="module")
def cluster():
    from ravine.study.executors import Ray

    executor = Ray(None, parallel=2)  # a private local cluster, 2 CPUs, 127.0.0.1
    yield executor
    ray.shutdown()


def test_a_study_on_ray_gives_the_local_executors_trials_and_results(cluster, tmp_path):
    on_ray = run_tune(CONFIG, tmp_path / "ray", executor=cluster)
    local = run_tune(CONFIG, tmp_path / "local")
    assert on_ray.counts == local.counts == {"complete": 6, "pruned": 0, "failed": 0, "stale": 0}

    def trials(result):
        return sorted((t.number, t.params["lr"], t.value) for t in result.study.trials)

    assert trials(on_ray) == trials(local)
    # Two batches were in flight at once: the trials' runs overlapped in time.
    starts = sorted((t.datetime_start, t.datetime_complete) for t in on_ray.study.trials)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(starts))


def test_ravine_study_through_ray(cluster, tmp_path):
    config = StudyConfig(
        optimizers=("adam",),
        tasks=("digits_mlp",),
        trials=2,
        batch=2,
        seeds=2,
        tune_seeds=1,
        epochs=2,
    )
    on_ray = run_study(config, tmp_path / "ray", executor=cluster)
    local = run_study(config, tmp_path / "local")
    cell_ray, cell_local = on_ray.cells[("digits_mlp", "adam")], local.cells[("digits_mlp", "adam")]
    assert cell_ray.tuned == cell_local.tuned
    assert cell_ray.test == cell_local.test
