"""A preprocessed IBL session -> event session (mtm_jax.datasets.events schema) for POYO."""

from __future__ import annotations

import numpy as np

from mtm_jax.datasets.events import session as session_lib
from mtm_jax.datasets import schema
from mtm_jax.datasets.ibl.alf import IblDataError
from mtm_jax.datasets.ibl.preprocess import T_AFTER, bin_centres

BEHAVIOUR_NAMES = ("wheel_speed", "whisker_motion_energy")  # event sessions: behaviour dims in this order


def event_session(binned: dict, session_id: str) -> session_lib.EventSession:
  """A preprocessed session (preprocess) -> event session (mtm_jax.datasets.events schema).

  Trials are the aligned windows [stimOn - 0.5, stimOn + 1.5) s, in their binned split;
  a window overlapping the previous kept one is left out (counted in source_info).
  Behaviour: BEHAVIOUR_NAMES at the 20 ms bin centres of the kept windows, weight 1."""
  align = binned["align_times"]
  order = np.argsort(align, kind="stable")
  kept, last_end = [], -np.inf
  for k in order:
    if align[k] - schema.T_BEFORE >= last_end:
      kept.append(k)
      last_end = align[k] + T_AFTER
  kept = np.array(kept, np.int64)
  starts, ends = align[kept] - schema.T_BEFORE, align[kept] + T_AFTER
  labels = binned["trial_split"][kept]
  splits = {s: np.stack([starts[labels == s], ends[labels == s]], 1).reshape(-1, 2) for s in session_lib.SPLITS}
  empty = [s for s, iv in splits.items() if len(iv) == 0]
  if empty:
    raise IblDataError(
      f"session {session_id}: no trials left in split(s) {empty} after removing overlapping "
      f"trial windows; the event data set needs all of {list(session_lib.SPLITS)}"
    )
  values = np.stack([binned[name][kept] for name in BEHAVIOUR_NAMES], axis=-1)  # [K, N_BINS, 2]
  info = dict(binned["source_info"], dropped_overlapping_windows=int(len(align) - len(kept)))
  return session_lib.EventSession(
    session_id=session_id,
    spike_times=binned["spike_times"],
    spike_units=binned["spike_units"],
    unit_ids=np.array([f"{session_id}/{u}" for u in binned["unit_ids"]], dtype=object),
    unit_regions=binned["regions"],
    behaviour_name=",".join(BEHAVIOUR_NAMES),
    behaviour_timestamps=bin_centres(align[kept]).reshape(-1),
    behaviour_values=values.reshape(-1, len(BEHAVIOUR_NAMES)).astype(np.float32),
    behaviour_weights=np.ones(len(kept) * schema.N_BINS, np.float32),
    trial_starts=starts,
    trial_ends=ends,
    splits=splits,
    source_info=info,
    source_files=binned["source_files"],
  )
