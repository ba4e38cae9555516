"""Instruments that show why training is hard: gradient health, curvature, landscapes.

Usable on any ``torch.nn.Module`` + loss + data:

* :mod:`ravine.probe.gradients`: per-layer gradient / weight / update norms and activation
  statistics over training; vanishing and exploding gradients flagged with advice.
* :mod:`ravine.probe.curvature`: Hessian-vector products, Lanczos eigenvalues, Hutchinson
  trace and diagonal, spectral density, condition number, per-layer (block) curvature, saddle
  points and their escape directions.
* :mod:`ravine.probe.landscape`: interpolation curves, filter-normalized surfaces and
  optimizer trajectories, evaluated batched.
* :mod:`ravine.probe.tracking`: curvature every k updates during training, with saddle and
  flat-region episodes.
* :mod:`ravine.probe.signals`: gradient noise (SNR, noise scale, batch-size tests), the step's
  alpha, the Hessian trace and the distance travelled, every k updates, from per-sample
  gradients (``torch.func``); findings with advice.
"""

from ravine.probe.curvature import (
    HessianOperator,
    block_curvature,
    block_operator,
    bottom_eigenvalues,
    condition_number,
    hessian_diagonal,
    hessian_operator,
    hessian_trace,
    hvp,
    lanczos,
    saddle_report,
    spectral_density,
    top_eigenvalues,
)
from ravine.probe.gradients import GradientMonitor, diagnose
from ravine.probe.landscape import (
    filter_normalize,
    interpolate,
    pca_directions,
    random_directions,
    surface,
    trajectory,
)
from ravine.probe.signals import (
    GradientNoise,
    TrainingSignals,
    diagnose_signals,
    gradient_noise,
    per_sample_gradients,
)
from ravine.probe.tracking import CurvatureRecord, CurvatureTracker

__all__ = [
    "CurvatureRecord",
    "CurvatureTracker",
    "GradientMonitor",
    "GradientNoise",
    "HessianOperator",
    "TrainingSignals",
    "block_curvature",
    "block_operator",
    "bottom_eigenvalues",
    "condition_number",
    "diagnose",
    "diagnose_signals",
    "filter_normalize",
    "gradient_noise",
    "hessian_diagonal",
    "hessian_operator",
    "hessian_trace",
    "hvp",
    "interpolate",
    "lanczos",
    "pca_directions",
    "per_sample_gradients",
    "random_directions",
    "saddle_report",
    "spectral_density",
    "surface",
    "top_eigenvalues",
    "trajectory",
]
