"""Preprocessing of a read IBL session (as the MtM reference): trial selection, binning, behaviour.

Trials aligned at stimOn_times, -0.5 .. +1.5 s in 20 ms bins (100 bins); all probes
merged (neurons ordered by probe name, then cluster id); trials kept when
firstMovement_times - stimOn_times is in [0.08, 2] s, none of the trial events is NaN,
choice != 0 and the trial window lies inside every recording (wheel, camera, and each
probe's spike sorting, from its first to its last spike: a sorting that starts late or
stops early would otherwise give trials of silence); per trial choice (IBL sign: -1 counter-clockwise / stimulus reported on the
right, +1 clockwise / left), block (probabilityLeft), signed contrast (contrastRight -
contrastLeft), reward (feedbackType == 1), reaction time; per bin the whisker motion
energy interpolated to the bin centres and the wheel speed |position(bin end) -
position(bin start)| / 20 ms (rad/s, position interpolated linearly); optionally only
units with a minimum firing rate or quality label; trials drawn 70/10/20 into
train/val/test with a fixed seed.
"""

from __future__ import annotations

from absl import logging
import numpy as np
import pandas as pd

from mtm_jax.datasets import recording
from mtm_jax.datasets import schema
from mtm_jax.datasets.ibl import alf
from mtm_jax.datasets.ibl import cache
from mtm_jax.datasets.ibl import configs

T_AFTER = schema.N_BINS * schema.BIN_SIZE - schema.T_BEFORE  # 1.5 s after stimulus onset
# Events whose NaN drops a trial (contrasts are NaN on the side without a stimulus).
NAN_EXCLUDE = ("stimOn_times", "firstMovement_times", "feedback_times", "choice", "feedbackType", "probabilityLeft")


def select_trials(trials: pd.DataFrame, options: configs.IblOptions = configs.IblOptions()) -> tuple[np.ndarray, dict]:
  """Indices of the kept trials (table rows) and how many each rule dropped.

  Rules in order: NaN stimOn_times (alignment), NaN in another event of NAN_EXCLUDE,
  choice 0 (no-go), reaction time outside [min, max]."""
  stim = trials["stimOn_times"].to_numpy(np.float64)
  nan_align = ~np.isfinite(stim)
  nan_other = ~nan_align & np.any([~np.isfinite(trials[c].to_numpy(np.float64)) for c in NAN_EXCLUDE], axis=0)
  ok = ~nan_align & ~nan_other
  no_choice = ok & (trials["choice"].to_numpy(np.float64) == 0)
  ok &= ~no_choice
  rt = trials["firstMovement_times"].to_numpy(np.float64) - stim
  with np.errstate(invalid="ignore"):
    bad_rt = ok & ((rt < options.min_reaction_time) | (rt > options.max_reaction_time))
  ok &= ~bad_rt
  counts = dict(
    n_trials_in_table=int(len(stim)),
    dropped_nan_stim_on=int(nan_align.sum()),
    dropped_nan_events=int(nan_other.sum()),
    dropped_no_choice=int(no_choice.sum()),
    dropped_reaction_time=int(bad_rt.sum()),
  )
  return np.flatnonzero(ok), counts


def bin_edges(align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS + 1] bin edges (s) of trials aligned at align_times [K]."""
  offsets = -schema.T_BEFORE + schema.BIN_SIZE * np.arange(schema.N_BINS + 1)
  return np.asarray(align_times, np.float64)[:, None] + offsets[None, :]


def bin_centres(align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] bin centres (s)."""
  edges = bin_edges(align_times)
  return 0.5 * (edges[:, 1:] + edges[:, :-1])


def bin_spikes(times: np.ndarray, columns: np.ndarray, n_columns: int, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS, n_columns] int32 spike counts per trial, bin and column.

  times [S] sorted spike times; columns [S] column (neuron) of each spike, -1 = not kept."""
  edges = bin_edges(align_times)
  counts = np.zeros((len(edges), schema.N_BINS, n_columns), np.int32)
  for k, e in enumerate(edges):
    lo, hi = np.searchsorted(times, [e[0], e[-1]], side="left")
    cols = columns[lo:hi]
    bins = np.searchsorted(e, times[lo:hi], side="right") - 1
    keep = (cols >= 0) & (bins >= 0) & (bins < schema.N_BINS)
    np.add.at(counts[k], (bins[keep], cols[keep]), 1)
  return counts


def interpolate_to_bins(times: np.ndarray, values: np.ndarray, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] values interpolated linearly at the bin centres (NaN samples skipped)."""
  finite = np.isfinite(values)
  return np.interp(bin_centres(align_times), times[finite], values[finite]).astype(np.float32)


def wheel_speed(times: np.ndarray, position: np.ndarray, align_times: np.ndarray) -> np.ndarray:
  """[K, N_BINS] wheel speed (rad/s): |position(end) - position(start)| / bin size per bin,
  with the position interpolated linearly at the bin edges."""
  at_edges = np.interp(bin_edges(align_times), times, position)
  return (np.abs(np.diff(at_edges, axis=1)) / schema.BIN_SIZE).astype(np.float32)


def _covered(align_times: np.ndarray, times: np.ndarray) -> np.ndarray:
  """[K] bool: the trial window lies inside [times[0], times[-1]]."""
  return recording.inside(align_times - schema.T_BEFORE, align_times + T_AFTER, times[0], times[-1])


def _recordings(raw: dict) -> list[tuple[str, str, str, np.ndarray]]:
  """(count, name, file, sorted times) of every recording a trial window must lie inside:
  wheel and camera (behaviour), then each probe's spikes."""
  out = [
    ("dropped_outside_behaviour_recording", "the wheel recording", raw["wheel_times_path"], raw["wheel_times"]),
    ("dropped_outside_behaviour_recording", "the camera recording", raw["camera_times_path"], raw["camera_times"]),
  ]
  spikes = "dropped_outside_spike_recording"
  for name, probe in sorted(raw["probes"].items()):
    out.append((spikes, f"the spike sorting of {name}", probe["paths"]["spikes.times.npy"], probe["times"]))
  return out


def inside_recordings(raw: dict, align: np.ndarray) -> tuple[np.ndarray, dict]:
  """[K] bool: the windows of trials aligned at `align` that lie inside every recording
  (_recordings), and how many each count dropped (a trial counted once, under the first
  recording that leaves it out). A warning names each recording that leaves trials out;
  IblDataError when none of K > 0 trials is left."""
  where = raw["where"]
  ok = np.ones(len(align), bool)
  counts = {"dropped_outside_behaviour_recording": 0, "dropped_outside_spike_recording": 0}
  described = []
  for count, name, path, times in _recordings(raw):
    covered = _covered(align, times)
    counts[count] += int(np.sum(ok & ~covered))
    ok &= covered
    if not covered.all():
      described.append(f"{name} ({path}, times {times[0]:.3f} .. {times[-1]:.3f} s) holds {int(covered.sum())}")
      logging.warning(
        "%s: %d of %d trials lie outside %s (%s: times %.3f .. %.3f s; trial windows %.3f .. %.3f s): dropped",
        where,
        int(np.sum(~covered)),
        len(align),
        name,
        path,
        times[0],
        times[-1],
        align.min() - schema.T_BEFORE,
        align.max() + T_AFTER,
      )
  if len(align) and not ok.any():
    raise alf.IblDataError(
      f"{where}: none of the {len(align)} trials left by the trial rules ({raw['trials_path']}: windows "
      f"{align.min() - schema.T_BEFORE:.3f} .. {align.max() + T_AFTER:.3f} s) lies inside every recording: "
      f"{'; '.join(described)} of them; are the files of one session, and is the recording complete?"
    )
  return ok, counts


def select_units(probe: dict, options: configs.IblOptions, where: str) -> tuple[np.ndarray, int]:
  """Cluster ids kept on one probe (sorted) and how many spike-less clusters were dropped."""
  n_clusters = len(probe["channels"])
  keep = np.zeros(n_clusters, bool)
  keep[np.unique(probe["clusters"])] = True
  n_silent = int(n_clusters - keep.sum())
  metrics, path = probe["metrics"], probe["paths"]["clusters.metrics.pqt"]
  for column, wanted in (("firing_rate", options.min_firing_rate > 0), ("label", options.good_units_only)):
    if wanted and column not in metrics.columns:
      raise alf.IblDataError(f"{where}: {path} has no {column!r} column, needed by the unit filter")
  if options.min_firing_rate > 0:
    keep &= metrics["firing_rate"].to_numpy(np.float64) >= options.min_firing_rate
  if options.good_units_only:
    keep &= metrics["label"].to_numpy(np.float64) == 1
  return np.flatnonzero(keep), n_silent


def preprocess(raw: dict, options: configs.IblOptions = configs.IblOptions()) -> dict:
  """A read session (alf.read_session) -> binned session in the schema of
  mtm_jax.datasets.schema, plus trial_index [K] (trials table rows), trial_split [K] str,
  unit_ids [N], spike_times/spike_units of the kept units, source_info (counts) and
  source_files (the paths read)."""
  where = raw["where"]
  trials = raw["trials"]
  kept, info = select_trials(trials, options)
  stim = trials["stimOn_times"].to_numpy(np.float64)
  covered, counts = inside_recordings(raw, stim[kept])
  info.update(counts)
  kept = kept[covered]
  if info["dropped_nan_stim_on"]:
    logging.warning(
      "%s: %d of %d trials have NaN stimOn_times (alignment) in %s: dropped",
      where,
      info["dropped_nan_stim_on"],
      info["n_trials_in_table"],
      raw["trials_path"],
    )
  logging.info(
    "%s: trials kept %d; dropped %s", where, len(kept), {k: v for k, v in info.items() if k.startswith("dropped")}
  )
  if len(kept) == 0:
    raise alf.IblDataError(
      f"{where}: no usable trials in {raw['trials_path']} ({info['n_trials_in_table']} trials; "
      f"dropped: {', '.join(f'{k}={v}' for k, v in info.items() if k.startswith('dropped'))})"
    )
  if len(kept) < len(schema.SPLIT_FRACTIONS):
    raise alf.IblDataError(
      f"{where}: only {len(kept)} usable trials in {raw['trials_path']}; need at least "
      f"{len(schema.SPLIT_FRACTIONS)} for the train/val/test split"
    )
  align = stim[kept]

  spikes, regions, unit_ids, spike_times, spike_units = [], [], [], [], []
  n_units = 0
  info["dropped_silent_clusters"] = info["dropped_by_unit_filter"] = 0
  for name, probe in sorted(raw["probes"].items()):
    ids, n_silent = select_units(probe, options, where)
    info["dropped_silent_clusters"] += n_silent
    info["dropped_by_unit_filter"] += int(len(probe["channels"]) - n_silent - len(ids))
    columns = np.full(len(probe["channels"]), -1, np.int64)
    columns[ids] = np.arange(len(ids))
    spike_columns = columns[probe["clusters"]]
    spikes.append(bin_spikes(probe["times"], spike_columns, len(ids), align))
    regions += list(probe["regions"][probe["channels"][ids]])
    unit_ids += [f"{name}/{c}" for c in ids]
    on = spike_columns >= 0
    spike_times.append(probe["times"][on])
    spike_units.append(spike_columns[on] + n_units)
    n_units += len(ids)
  if n_units == 0:
    raise alf.IblDataError(
      f"{where}: no units left after the unit filter (min_firing_rate={options.min_firing_rate}, "
      f"good_units_only={options.good_units_only})"
    )
  times = np.concatenate(spike_times)
  order = np.argsort(times, kind="stable")

  choice = trials["choice"].to_numpy(np.float64)[kept]
  contrast = np.nan_to_num(trials["contrastRight"].to_numpy(np.float64)[kept]) - np.nan_to_num(
    trials["contrastLeft"].to_numpy(np.float64)[kept]
  )
  split = np.empty(len(kept), dtype=object)
  for name, idx in schema.split_trials(len(kept), seed=options.split_seed).items():
    split[idx] = name
  info.update(
    n_trials=int(len(kept)),
    n_units=int(n_units),
    camera=raw["camera"],
    probes={name: p["collection"] for name, p in sorted(raw["probes"].items())},
  )
  return dict(
    spikes=np.concatenate(spikes, axis=2),
    regions=np.array(regions, dtype=object),
    choice=choice.astype(np.int32),
    block=trials["probabilityLeft"].to_numpy(np.float32)[kept],
    contrast=contrast.astype(np.float32),
    reward=(trials["feedbackType"].to_numpy(np.float64)[kept] == 1).astype(np.int32),
    reaction_time=(trials["firstMovement_times"].to_numpy(np.float64)[kept] - align).astype(np.float32),
    whisker_motion_energy=interpolate_to_bins(raw["camera_times"], raw["motion_energy"], align),
    wheel_speed=wheel_speed(raw["wheel_times"], raw["wheel_position"], align),
    trial_index=kept.astype(np.int32),
    trial_split=split,
    align_times=align,
    unit_ids=np.array(unit_ids, dtype=object),
    spike_times=times[order],
    spike_units=np.concatenate(spike_units)[order].astype(np.int32),
    source_info=info,
    source_files=raw["files"],
  )


def load_session(root: str, eid: str, options: configs.IblOptions = configs.IblOptions()) -> dict:
  """Reads, validates and preprocesses session `eid` of the ONE cache at `root` (preprocess)."""
  return preprocess(alf.read_session(cache.open_cache(root), eid, options), options)
