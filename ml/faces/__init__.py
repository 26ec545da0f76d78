"""Faces in images: MTCNN detection, five-point alignment, RoI-tanh warps, decoding and bulk embedding."""
