"""Node and edge attribution methods (AtP, integrated gradients, exact patching) and `discover`."""

from attribution.atp import atp_effects
from attribution.batches import PairBatch, pair_batches
from attribution.discover import discover, select_nodes
from attribution.edges import edge_effects, wiring
from attribution.effects import ERROR, BatchEffects, NodeEffects, SubmoduleEffects, node_name
from attribution.exact import ExactRunsError, exact_effects, exact_run_count
from attribution.ig import ig_effects, ig_joint_effects
from attribution.nodes import node_effects
from attribution.splice import Spliced, Values, check_submodules, gradients, run_spliced

__all__ = [
    "ERROR",
    "BatchEffects",
    "ExactRunsError",
    "NodeEffects",
    "PairBatch",
    "Spliced",
    "SubmoduleEffects",
    "Values",
    "atp_effects",
    "check_submodules",
    "discover",
    "edge_effects",
    "exact_effects",
    "exact_run_count",
    "gradients",
    "ig_effects",
    "ig_joint_effects",
    "node_effects",
    "node_name",
    "pair_batches",
    "run_spliced",
    "select_nodes",
    "wiring",
]
