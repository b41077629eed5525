"""Learned binary masks over SAE features and neurons."""
