"""The DIP loop: one iteration for K >= 1 runs (iteration.py), what it trains (trainable.py), and the
LightningModule the Trainer fits (engine.py)."""
