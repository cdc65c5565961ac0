"""TFDS builder of binned trials (see ibl_binned.py)."""

from data_builders.ibl_binned.ibl_binned import Builder, IblBinnedConfig  # registers "ibl_binned"

__all__ = ["Builder", "IblBinnedConfig"]
