"""What every long `ml` function shares: the callbacks, device and determinism policy, safe loading."""
