"""A checkpoint of the official NEDS code as the step-0 checkpoint of a NEDS workdir
(NEDSTask.import_reference; `python -m experiments.import_checkpoint --kind=neds`).

Their state dict keys its per-session tables by eid; our sessions are built ibl_binned
data sets, and a session's eid is its session_id (or the --session_eids entry given for
it). Their session embeddings are rows of a table over their fixed eid list (their
data/train_eids.txt then data/test_eids.txt): --eids names those files (comma-separated,
read in order), or --session_rows gives each session's row. Their spike tables are as wide
as their largest session (N_max; a state dict holds no other neuron count): each of our
sessions must have at most N_max neurons, and the largest exactly N_max (our spike
tokeniser's hidden width is 2 N of our largest session); --eid_list (a JSON file of their
meta_data["eid_list"], eid -> neurons) checks every session's count exactly. The records
are those tasks/neds.py's training writes (trace statistics from our training split).
"""

from __future__ import annotations

import json
import os

from flax import nnx

from mtm_jax import modalities
from mtm_jax.datasets import behaviour_tokens as tokens, pipeline
from mtm_jax.interop import neds as neds_interop

MAX_LISTED = 8  # eids named in an error


def read_eids(files: str) -> list[str]:
  """Their eid table: the eids of the comma-separated files, one per line, in order."""
  eids = []
  for path in (p for p in files.split(",") if p.strip()):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--eids: {path} does not exist (their data/train_eids.txt, data/test_eids.txt)")
    with open(path, encoding="utf-8") as f:
      eids += [line.strip() for line in f if line.strip()]
  return eids


def include_eids(ckpt, eids: list[str], options: dict, modality: str) -> list[str]:
  """Their session-embedding table's eids, row by row (rows of sessions other than ours
  are placeholders when built from --session_rows)."""
  n_rows = neds_interop.session_table_rows(ckpt, modality)
  if options.get("eids_file"):
    table = read_eids(options["eids_file"])
    if len(table) != n_rows:
      raise ValueError(
        f"--eids: {options['eids_file']} lists {len(table)} eids; the checkpoint's session-embedding table "
        f"has {n_rows} rows (their train_eids.txt then test_eids.txt)"
      )
    missing = [e for e in eids if e not in table]
    if missing:
      raise ValueError(f"--eids: {options['eids_file']} does not list the sessions' eids {missing}")
    return table
  rows = list(options.get("session_rows") or ())
  if not rows:
    raise ValueError(
      f"the checkpoint has a session-embedding table of {n_rows} rows: give their eid list with --eids "
      "(their data/train_eids.txt,data/test_eids.txt) or each session's row with --session_rows"
    )
  if len(rows) != len(eids):
    raise ValueError(f"--session_rows: {len(rows)} rows for {len(eids)} sessions of --datasets")
  rows = [int(r) for r in rows]
  if len(set(rows)) != len(rows) or not all(0 <= r < n_rows for r in rows):
    raise ValueError(f"--session_rows: expected distinct rows in [0, {n_rows}), got {rows}")
  table = [f"<row {r}>" for r in range(n_rows)]
  for e, r in zip(eids, rows):
    table[r] = e
  return table


def session_eids(datasets, infos, given) -> list[str]:
  """Each session's eid in the checkpoint: --session_eids, else its session_id."""
  if not given:
    return [i.session_id for i in infos]
  if len(given) != len(datasets):
    raise ValueError(f"--session_eids: {len(given)} eids for {len(datasets)} sessions of --datasets")
  return list(given)


def check_neurons(datasets, eids, counts, ckpt, eid_list_file: str | None) -> None:
  """ValueError naming the session and both counts when our neurons do not fit theirs."""
  width = neds_interop.spike_table_width(ckpt, eids[0])
  for name, eid, n in zip(datasets, eids, counts):
    if n > width:
      raise ValueError(
        f"data set {name!r} (eid {eid}): {n} neurons, but the checkpoint's spike tables hold {width} "
        "(their largest session's count)"
      )
  if max(counts) != width:
    raise ValueError(
      f"--datasets: the largest of our sessions has {max(counts)} neurons, the checkpoint's spike tables "
      f"{width} (their largest session): include the session of {width} neurons"
    )
  if eid_list_file:
    with open(eid_list_file, encoding="utf-8") as f:
      theirs = json.load(f)
    if not isinstance(theirs, dict):
      raise ValueError(f"--eid_list: {eid_list_file} must hold a JSON object {{eid: neuron count}}")
    for name, eid, n in zip(datasets, eids, counts):
      if eid not in theirs:
        raise ValueError(f"--eid_list: {eid_list_file} has no eid {eid} (data set {name!r})")
      if int(theirs[eid]) != n:
        raise ValueError(f"data set {name!r} (eid {eid}): {n} neurons, their eid list has {int(theirs[eid])}")


def imported(task, ckpt, datasets, data_dir, options, base_config) -> tuple:
  """(config, session records, parameters, summary) of NEDSTask.import_reference, which saves
  them (`task.check` checks the config): options n_heads, session_eids, eids_file, session_rows,
  eid_list_file (see the module docstring)."""
  where = ckpt.path or "NEDS state dict"
  if not ckpt.names(f"{neds_interop.EMB}."):
    raise ValueError(f"--source: {where} has no {neds_interop.EMB}.* tensors: not a NEDS (MultiModal) state dict")
  if not datasets:
    raise ValueError("--datasets: a NEDS import needs our sessions (built ibl_binned data sets), in row order")
  n_heads = options.get("n_heads") or ckpt.meta.get("attributes", {}).get("n_heads")
  if not n_heads:
    raise ValueError("--n_heads: a NEDS state dict does not hold its number of heads (their configs: 8)")
  hp = neds_interop.architecture(ckpt, int(n_heads))
  config = neds_interop.model_config(hp, base_config)
  config.data.datasets, config.data.data_dir = ",".join(datasets), os.path.abspath(data_dir)
  task.check(config)
  infos = [pipeline.session_info(n, config.data.data_dir) for n in datasets]
  eids = session_eids(datasets, infos, list(options.get("session_eids") or ()))
  known = neds_interop.checkpoint_eids(ckpt)
  for name, eid in zip(datasets, eids):
    if eid not in known:
      flag = "--session_eids" if options.get("session_eids") else "the session_id (or --session_eids)"
      listed = ", ".join(known[:MAX_LISTED]) + (", ..." if len(known) > MAX_LISTED else "")
      raise ValueError(f"data set {name!r}: {flag} gives eid {eid!r}, which has no tables in {where} ({listed})")
  if len(set(eids)) != len(eids):
    raise ValueError(f"--session_eids: the sessions' eids {eids} repeat one")
  counts = [i.n_neurons for i in infos]
  check_neurons(datasets, eids, counts, ckpt, options.get("eid_list_file"))
  table = include_eids(ckpt, eids, options, hp.modalities[0])
  loaded = pipeline.load_sessions(datasets, config.data.data_dir, fields=None)
  loaded = [tokens.named_session(s, config.data.data_dir) for s in loaded]
  static = any(m in modalities.STATIC for m in hp.modalities)
  for s in loaded:
    t = s.splits["train"]["spikes"].shape[1]
    if t > hp.max_bins or (static and t != hp.max_bins):
      raise ValueError(
        f"data set {s.name!r}: trials of {t} bins; the checkpoint's position table has {hp.max_bins} "
        f"({'exactly' if static else 'at most'} that many with its modalities {hp.modalities})"
      )
  model, unused = neds_interop.convert(ckpt, dict(zip(eids, counts)), table, n_heads=int(n_heads))
  records = [tokens.session_record(s, hp.modalities) for s in loaded]
  arch = dict(size=f"{hp.width}x{hp.n_layers}x{hp.n_heads}x{hp.mlp_width}", modalities=list(hp.modalities))
  arch.update(width=hp.width, n_layers=hp.n_layers, n_heads=hp.n_heads, mlp_width=hp.mlp_width, max_bins=hp.max_bins)
  rows = [table.index(e) for e in eids]
  summary = dict(kind="neds", architecture=arch, eids=eids, session_rows=rows, unused=unused)
  return config, records, nnx.state(model, nnx.Param), summary
