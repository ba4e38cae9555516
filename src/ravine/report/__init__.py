"""Figures and reports of runs and studies (matplotlib is imported only when drawing)."""

from ravine.report.plots import (
    OPTIMIZER_COLORS,
    optimizer_color,
    optimizer_colors,
    plot_loss_curves,
    plot_trajectories,
    plot_trajectory_grid,
)

__all__ = [
    "OPTIMIZER_COLORS",
    "optimizer_color",
    "optimizer_colors",
    "plot_loss_curves",
    "plot_trajectories",
    "plot_trajectory_grid",
]
