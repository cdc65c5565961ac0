"""A user's own NWB files as data sets: one per file, named after it, events and binned trials.

Every `*.nwb` file anywhere under the manual dir is one session. Its data sets are named
`nwb_<stem>` (config_name: the file name without `.nwb`, lower case, every run of
characters other than letters, digits and `_` made one `_`), e.g.
`sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb` -> `nwb_sub_jenkins_ses_full_desc_train_behavior_ecephys`.
Two files of one name (in other folders, or stems that differ only in such characters) are
refused, naming both: rename one.

windowed cuts every trial to a window from its start: `window` seconds (a multiple of
20 ms, at most schema.N_BINS bins = 2 s, the longest input NDT1 takes), by default the
median trial length rounded down to 20 ms and capped at 2 s; shorter trials are left out
and counted. The event data sets are cut only when a window is asked for; binned_trials
always cuts, and counts the spikes in 20 ms bins (schema.BIN_SIZE, events.binning), the
behaviour interpolated linearly at the bin centres.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np

from mtm_jax.datasets import schema
from mtm_jax.datasets.events import binning
from mtm_jax.datasets.events import session as session_lib

PREFIX = "nwb_"
PATTERN = "**/*.nwb"  # the files of a manual dir that are sessions


def config_name(path: str) -> str:
  """The data set config name of NWB file `path`: nwb_<sanitised stem>."""
  stem = os.path.splitext(os.path.basename(path))[0]
  clean = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_")
  if not clean:
    raise ValueError(f"{path}: its name {stem!r} has no letter or digit to name a data set after")
  return PREFIX + re.sub(r"_+", "_", clean)


def list_files(manual_dir: str) -> dict[str, str]:
  """{config name: path relative to manual_dir} of every *.nwb file under manual_dir, by name.
  ValueError when two files have one name."""
  if not manual_dir or not os.path.isdir(manual_dir):
    raise ValueError(f"manual_dir {manual_dir!r} is not a directory; pass --manual_dir=<folder of NWB files>")
  out: dict[str, str] = {}
  for full in sorted(glob.glob(os.path.join(glob.escape(manual_dir), PATTERN), recursive=True)):
    rel, name = os.path.relpath(full, manual_dir), config_name(full)
    if name in out:
      raise ValueError(
        f"{manual_dir}: the NWB files {out[name]!r} and {rel!r} would both be data set {name!r}; "
        "rename one (data set names are the file name, lower case, other characters as '_')"
      )
    out[name] = rel
  return dict(sorted(out.items()))


def find_file(manual_dir: str, name: str) -> str:
  """The path of the file of config `name` (nwb_<stem>) under manual_dir."""
  files = list_files(manual_dir)
  if name not in files:
    raise ValueError(
      f"no NWB file under manual_dir {manual_dir} is data set {name!r}; the files there are "
      f"{files or 'none'} (`python -m data_builders.build --list_nwb --manual_dir=...` lists them)"
    )
  return os.path.join(manual_dir, files[name])


def window_bins(session: session_lib.EventSession, window: float | None, where: str) -> int:
  """The number of 20 ms bins of the window: `window` seconds, or the median trial length."""
  top = schema.N_BINS
  if window is None:
    median = float(np.median(session.trial_ends - session.trial_starts))
    return int(min(top, np.floor(median / schema.BIN_SIZE + 1e-6)))
  n = round(window / schema.BIN_SIZE)
  if not 0 < window <= top * schema.BIN_SIZE + 1e-9 or abs(n * schema.BIN_SIZE - window) > 1e-9:
    raise ValueError(
      f"{where}: the binned window is {window} s; expected a multiple of {schema.BIN_SIZE} s up to "
      f"{top * schema.BIN_SIZE} s ({top} bins, the longest input of NDT1)"
    )
  return n


def windowed(session: session_lib.EventSession, window: float | None = None, where: str = ""):
  """The session with every trial cut to the window from its start ([start, start + window),
  in the trials and the splits); trials shorter than the window are left out, counted in
  source_info (dropped_short_trials, and window in s). Returns it and the window's bins.
  ValueError when a split has no trial left."""
  where = where or session.session_id
  n_bins = window_bins(session, window, where)
  if n_bins < 1:
    raise ValueError(f"{where}: the median trial is shorter than one {schema.BIN_SIZE} s bin; pass a window")
  span = round(n_bins * schema.BIN_SIZE, 6)
  starts, ends = np.asarray(session.trial_starts), np.asarray(session.trial_ends)
  long = ends - starts >= span - 1e-9
  splits = {}
  for split, intervals in session.splits.items():
    iv = np.asarray(intervals, np.float64).reshape(-1, 2)
    iv = iv[iv[:, 1] - iv[:, 0] >= span - 1e-9]
    splits[split] = np.stack([iv[:, 0], iv[:, 0] + span], axis=1)
  empty = [s for s in session_lib.SPLITS if len(splits.get(s, ())) == 0]
  if empty:
    raise ValueError(
      f"{where}: no trial of split(s) {empty} is at least the {span} s window long ({int(np.sum(~long))} of "
      f"{len(starts)} trials are shorter); pass a shorter window (--nwb_window)"
    )
  info = dict(session.source_info or {}, dropped_short_trials=int(np.sum(~long)), window=span)
  out = dataclasses.replace(
    session,
    trial_starts=starts[long],
    trial_ends=starts[long] + span,
    splits=splits,
    source_info=info,
  )
  out.validate(where=where)
  return out, n_bins


def binned_trials(session: session_lib.EventSession, window: float | None = None, where: str = "") -> dict:
  """The session's trials as binned windows aligned at their starts (windowed):
  {spikes [K, n, U] int32, behaviour [K, n, D] float32 (interpolated at the bin centres),
  trial_index [K] (position among the session's trials), trial_start [K], trial_split [K]
  str, regions [U], n_bins, session (the windowed session)}; only trials of a split."""
  cut, n_bins = windowed(session, window, where)
  starts = cut.trial_starts
  labels = np.full(len(starts), "", dtype=object)
  for split, intervals in cut.splits.items():
    labels[np.isin(starts, intervals[:, 0])] = split
  keep = np.flatnonzero(labels != "")
  windows = np.stack([starts[keep], cut.trial_ends[keep]], axis=1)
  spikes = binning.bin_spikes(cut, windows, schema.BIN_SIZE, n_bins)
  centres = windows[:, :1] + schema.BIN_SIZE * (np.arange(n_bins) + 0.5)  # [K, n]
  stamps, values = cut.behaviour_timestamps, cut.behaviour_values
  behaviour = np.stack([np.interp(centres, stamps, values[:, d]) for d in range(values.shape[1])], -1)
  return dict(
    spikes=spikes,
    behaviour=behaviour.astype(np.float32),
    trial_index=keep.astype(np.int32),
    trial_start=starts[keep],
    trial_split=labels[keep].astype(str),
    regions=np.asarray(cut.unit_regions, dtype=object),
    n_bins=n_bins,
    session=cut,
  )


def options(session: session_lib.EventSession, window: float | None) -> dict:
  """The NWB options a data set of `session` (read by nwb.read_nwb) was built with, for its
  provenance record (provenance.check_options; the flags: data_builders.prepare.NWB_FLAGS):
  the behaviour series, the names of its columns (None: unnamed) and the window."""
  info = session.source_info or {}
  return dict(
    behaviour=info.get("behaviour_series", session.behaviour_name), dims=info.get("behaviour_dims"), window=window
  )
