"""Learned binary masks over SAE features and neurons."""

from masks.circuit import mask_circuit
from masks.gates import HardConcreteGates, SigmoidGates
from masks.train import MaskResult, run_gated, train_mask

__all__ = [
    "HardConcreteGates",
    "MaskResult",
    "SigmoidGates",
    "mask_circuit",
    "run_gated",
    "train_mask",
]
