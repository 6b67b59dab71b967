"""Sweeps: image lists for Hydra multiruns, GPU leases for parallel jobs, gathering a sweep into one table."""
