"""How an IBL session is preprocessed (IblOptions) and the builder config names that encode it.

A session's config name (both IBL builders, ibl_binned and spike_events) is its eid, then
its non-default options: `<eid>[_beryl|_cosmos][_rate<Hz>][_good]` (config_name); one data
set has one name (canonical_config_name: options in that order, lower-case eid).
"""

from __future__ import annotations

import dataclasses
import re

REGION_LEVELS = {"allen": "Allen", "beryl": "Beryl", "cosmos": "Cosmos"}
_EID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


@dataclasses.dataclass(frozen=True)
class IblOptions:
  """How a session is preprocessed (its builder config name encodes the non-defaults)."""

  regions: str = "allen"  # region level: "allen" (finest acronym), "beryl" or "cosmos"
  min_firing_rate: float = 0.0  # Hz, clusters.metrics firing_rate; 0 keeps every unit
  good_units_only: bool = False  # keep units with clusters.metrics label == 1 only
  min_reaction_time: float = 0.08  # s, firstMovement_times - stimOn_times
  max_reaction_time: float = 2.0
  sorters: tuple[str, ...] = ("iblsorter", "pykilosort", "")  # preferred alf/<probe>/<sorter> ("" = none)
  split_seed: int = 0

  def __post_init__(self):
    if self.regions not in REGION_LEVELS:
      raise ValueError(f"IblOptions.regions: {self.regions!r}; expected one of {sorted(REGION_LEVELS)}")
    if self.min_firing_rate < 0:
      raise ValueError(f"IblOptions.min_firing_rate must be >= 0, got {self.min_firing_rate}")


def config_name(eid: str, options: IblOptions = IblOptions()) -> str:
  """Builder config name of a session: the eid, then `_beryl`/`_cosmos`, `_rate<Hz>`, `_good`."""
  name = str(eid)
  if options.regions != "allen":
    name += f"_{options.regions}"
  if options.min_firing_rate > 0:
    name += f"_rate{options.min_firing_rate:g}"
  if options.good_units_only:
    name += "_good"
  return name


def parse_config_name(name: str) -> tuple[str, IblOptions] | None:
  """(eid, options) of a config name made by config_name; None if `name` is not one."""
  match = re.fullmatch(rf"({_EID})((?:_[a-z]+[0-9.]*)*)", name)
  if not match:
    return None
  kwargs = {}
  for part in filter(None, match.group(2).split("_")):
    if part in ("beryl", "cosmos") and "regions" not in kwargs:
      kwargs["regions"] = part
    elif part == "good" and "good_units_only" not in kwargs:
      kwargs["good_units_only"] = True
    elif re.fullmatch(r"rate[0-9]+(\.[0-9]+)?", part) and "min_firing_rate" not in kwargs:
      kwargs["min_firing_rate"] = float(part[4:])
    else:
      raise ValueError(
        f"IBL config {name!r}: unknown or repeated option {part!r}; options are _beryl or "
        f"_cosmos (region level), _rate<Hz> (minimum firing rate), _good (label == 1 units)"
      )
  return match.group(1).lower(), IblOptions(**kwargs)


def canonical_config_name(name: str) -> str | None:
  """The one name of the data set `name` stands for (options in config_name's order, lower
  case eid); None if `name` is not an IBL config name."""
  parsed = parse_config_name(name)
  return None if parsed is None else config_name(*parsed)


def builder_config_kwargs(name: str) -> dict | None:
  """Keyword arguments of the TFDS builder config of IBL config name `name` (both IBL
  builders take them); None when `name` is not an IBL config name. A name that is not
  canonical (canonical_config_name) is refused, so one data set has one name."""
  parsed = parse_config_name(name)
  if parsed is None:
    return None
  eid, options = parsed
  if name != config_name(eid, options):
    raise ValueError(
      f"IBL config {name!r}: this data set is named {config_name(eid, options)!r} (lower-case eid, "
      f"options in the order _beryl/_cosmos, _rate<Hz>, _good)"
    )
  return dict(
    name=name,
    source="ibl",
    eid=eid,
    ibl_options=options,
    split_seed=options.split_seed,
    description=f"IBL session {eid} from the ONE cache in manual_dir ({options}).",
  )
