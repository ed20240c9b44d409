"""Patch-size calibration of local denoisers against a reference denoiser (Kamb & Ganguli 2024, §5).

The implementation lives in `scorelab.diagnostics` beside the median per-image r² that scores it (one home, and
no import circle); this module keeps the names importable from here.
"""
from __future__ import annotations

from .diagnostics import PatchCalibration, calibrate_patch_size, per_image_r2

__all__ = ["calibrate_patch_size", "PatchCalibration", "per_image_r2"]
