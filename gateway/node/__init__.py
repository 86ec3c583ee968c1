"""`mlx-manager node`: this machine's model servers, run for a gateway on another machine."""
