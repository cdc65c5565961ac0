"""The global vocabulary: embedding rows of units and sessions, and the records a checkpoint keeps.

Row 0 of both tables is padding; sessions follow in order, each with its units. A
checkpoint keeps one JSON record per session row, dict(name=, session_id=, unit_ids=[str]),
from which `Vocabulary.from_records` rebuilds the vocabulary without reading any data.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mtm_jax.datasets.events import session as session_lib


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Embedding rows of units and sessions: row 0 is padding, then sessions in order.

  Unit row of unit u of session s = 1 + (units of the sessions before s) + u; session row
  of s = 1 + its position. New sessions (fine-tuning) are appended with `extend`."""

  session_ids: tuple[str, ...]
  session_unit_counts: tuple[int, ...]
  unit_ids: tuple[str, ...]

  @property
  def n_unit_rows(self) -> int:
    return 1 + len(self.unit_ids)

  @property
  def n_session_rows(self) -> int:
    return 1 + len(self.session_ids)

  def session_row(self, session_id: str) -> int:
    if session_id not in self.session_ids:
      raise ValueError(f"vocabulary: unknown session {session_id!r}; it has {len(self.session_ids)} sessions")
    return 1 + self.session_ids.index(session_id)

  def unit_rows(self, session_id: str) -> np.ndarray:
    """[U] int32 embedding rows of the session's units, in the session's unit order."""
    i = self.session_row(session_id) - 1
    offset = 1 + sum(self.session_unit_counts[:i])
    return np.arange(offset, offset + self.session_unit_counts[i], dtype=np.int32)

  def extend(self, sessions: Sequence[session_lib.EventSession]) -> Vocabulary:
    """This vocabulary with the sessions it does not hold yet appended (in order)."""
    ids, counts, units = list(self.session_ids), list(self.session_unit_counts), list(self.unit_ids)
    for s in sessions:
      if s.session_id in ids:
        i = ids.index(s.session_id)
        offset = sum(counts[:i])
        if tuple(units[offset : offset + counts[i]]) != tuple(str(u) for u in s.unit_ids):
          raise ValueError(f"vocabulary: session {s.session_id!r} has different unit ids than the vocabulary")
        continue
      ids.append(s.session_id)
      counts.append(len(s.unit_ids))
      units.extend(str(u) for u in s.unit_ids)
    if len(set(units)) != len(units):
      raise ValueError("vocabulary: unit ids are not unique across sessions")
    return Vocabulary(tuple(ids), tuple(counts), tuple(units))

  def to_dict(self) -> dict:
    return dict(
      session_ids=list(self.session_ids),
      session_unit_counts=list(self.session_unit_counts),
      unit_ids=list(self.unit_ids),
    )

  @classmethod
  def from_dict(cls, d: dict) -> Vocabulary:
    return cls(tuple(d["session_ids"]), tuple(int(c) for c in d["session_unit_counts"]), tuple(d["unit_ids"]))

  @classmethod
  def from_records(cls, records: Sequence[dict]) -> Vocabulary:
    """The vocabulary of a checkpoint's session records (see `records`), in their order."""
    return cls(
      tuple(str(r["session_id"]) for r in records),
      tuple(len(r["unit_ids"]) for r in records),
      tuple(str(u) for r in records for u in r["unit_ids"]),
    )

  def records(self, names: Sequence[str]) -> list[dict]:
    """What a checkpoint keeps of each session row (JSON): dict(name=, session_id=, unit_ids=[str]),
    with names[i] the data set name of session row i + 1."""
    if len(names) != len(self.session_ids):
      raise ValueError(f"vocabulary: {len(names)} names for {len(self.session_ids)} sessions")
    offsets = np.concatenate([[0], np.cumsum(self.session_unit_counts, dtype=np.int64)])
    return [
      dict(name=n, session_id=sid, unit_ids=list(self.unit_ids[offsets[i] : offsets[i + 1]]))
      for i, (n, sid) in enumerate(zip(names, self.session_ids))
    ]

  def new_rows(self, since: Vocabulary) -> dict[str, np.ndarray]:
    """Rows that `since` (an earlier vocabulary this one extends) does not have:
    units [n_unit_rows] bool and sessions [n_session_rows] bool, True on the new rows (the
    padding row 0 is never new). ValueError when `since` is not a prefix of this vocabulary."""
    n = len(since.session_ids)
    if (
      since.session_ids != self.session_ids[:n]
      or since.session_unit_counts != self.session_unit_counts[:n]
      or since.unit_ids != self.unit_ids[: len(since.unit_ids)]
    ):
      raise ValueError(
        f"vocabulary: the earlier vocabulary ({n} sessions, {len(since.unit_ids)} units) is not a "
        f"prefix of this one ({len(self.session_ids)} sessions, {len(self.unit_ids)} units); rows "
        "are only ever appended"
      )
    return dict(
      units=np.arange(self.n_unit_rows) >= since.n_unit_rows,
      sessions=np.arange(self.n_session_rows) >= since.n_session_rows,
    )


def build_vocabulary(sessions: Sequence[session_lib.EventSession]) -> Vocabulary:
  """The vocabulary of `sessions`, in the given order."""
  return Vocabulary((), (), ()).extend(sessions)
