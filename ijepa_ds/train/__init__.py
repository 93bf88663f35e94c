"""The DeepSpeed trainer: engine, target encoder, training step and loop."""
