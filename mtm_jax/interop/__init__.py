"""Converters between PyTorch checkpoints of the reference implementations and mtm_jax.

- `state_dict`: exported state dicts (.npz, see parity/export_torch.py) and name tables.
- `ndt1`: the MtM authors' NDT1 / NDT1-stitch.
- `poyo`: torch_brain's POYO.

See docs/parity.md.
"""
