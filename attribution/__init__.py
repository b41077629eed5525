"""Node and edge attribution methods (AtP, integrated gradients, exact patching)."""
