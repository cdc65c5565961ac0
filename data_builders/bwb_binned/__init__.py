"""TFDS builder of BWB session files as binned 1 s windows (see bwb_binned.py)."""

from data_builders.bwb_binned.bwb_binned import BwbBinnedConfig, Builder  # registers "bwb_binned"

__all__ = ["Builder", "BwbBinnedConfig"]
