"""Small helpers shared by the trainer and the CLI (image grids, plots)."""
