"""Circuit diagrams, dashboards and the explorer page."""
