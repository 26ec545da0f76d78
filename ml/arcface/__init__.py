"""ArcFace embedding training: its config, the loop, the saved model files, and the sharded loss."""
