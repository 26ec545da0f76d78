"""Model inversion: class images from a trained ArcFace model (ML.md section 3)."""
