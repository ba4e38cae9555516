"""Instruments that show why training is hard: gradient health, curvature, landscapes."""
