"""The memory estimate: the physical model, the measured baseline and its calibration.
"""
