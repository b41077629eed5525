"""Learned binary masks over SAE features and neurons."""

from masks.gates import HardConcreteGates, SigmoidGates
from masks.train import MaskResult, run_gated, train_mask

__all__ = ["HardConcreteGates", "MaskResult", "SigmoidGates", "run_gated", "train_mask"]
