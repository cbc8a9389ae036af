"""Dask side of ntkcompute: tiled Gram matrices into Zarr and distributed solvers (issues 3, 4)."""
