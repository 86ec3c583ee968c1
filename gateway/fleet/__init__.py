"""Nodes: model servers on other machines (`mlx-manager node`), as the gateway sees them."""
