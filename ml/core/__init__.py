"""What every long `ml` function shares.

- `loop`: `ResumableLoop`, the one resumable loop (restore, units, checkpoint, stop), and `LoopPolicy`;
- `state`: the stateful wrappers it saves (`GlobalRNG`, `TorchRNG`, `CudaRNG`, `GeneratorState`, `TensorState`);
- `errors` (torch-free): `InputError`, the base of every config or data error, and the `Stopped` signal;
- `fingerprint` (torch-free): `fingerprint` and the resume check `resumable`;
- `seeding`: `seed_everything`, `derived_seed`, `epoch_seed`, `rng_state`, `set_rng_state`;
- `images`: `grid_png`; `callbacks`: the `Callbacks` protocol and `LocalCallbacks`;
- `device_state`, `device_errors`, `determinism`, `safe_load`: the device, determinism and safe-loading policy.
"""
