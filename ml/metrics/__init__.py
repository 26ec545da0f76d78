"""Verification and identification metrics of an embedding model, and their plots."""
