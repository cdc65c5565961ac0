"""TFDS builder of spike events (see spike_events.py)."""

from data_builders.spike_events.spike_events import Builder, SpikeEventsConfig  # registers "spike_events"

__all__ = ["Builder", "SpikeEventsConfig"]
