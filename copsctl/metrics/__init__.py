"""Panoptic quality: exact (no torch) and the differentiable surrogate (torch)."""
