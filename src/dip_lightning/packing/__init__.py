"""Packed runs: several DIP runs of one shape trained together as one batched model (launcher=packed)."""
