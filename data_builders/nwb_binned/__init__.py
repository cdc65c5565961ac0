"""TFDS builder of a user's NWB files as binned trials (see nwb_binned.py)."""

from data_builders.nwb_binned.nwb_binned import Builder, NwbBinnedConfig  # registers "nwb_binned"

__all__ = ["Builder", "NwbBinnedConfig"]
