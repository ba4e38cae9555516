"""ravine's instruments inside other training frameworks (optional extras).

* :mod:`ravine.integrations.lightning`: :class:`~ravine.integrations.lightning.RavineCallback`,
  gradient health and curvature tracking in a Lightning ``Trainer``
  (``pip install "ravine[lightning]"``).

This layer sits above :mod:`ravine.probe`: it imports the instruments, and nothing below it
imports this package.
"""
