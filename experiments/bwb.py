"""BrainWideBench end to end: pretrain each family on BWB's pretrain sessions, adapt it to each
eval session with seeds 43-45, predict TS1, TS2 and TS3, write the submission (and its zip),
run the leaderboard's upload check and score it against ground truth regenerated from the
session files (mtm_jax.bwb.benchmark; docs/bwb.md).

  python -m experiments.bwb --sessions_dir=<BWB root> --workdir=runs/bwb
  python -m experiments.bwb --sessions_dir=<BWB root> --workdir=runs/bwb --suites=ts2 --family=ndt1
  python -m experiments.bwb --sessions_dir=<BWB root> --workdir=runs/bwb --family=neds
  python -m experiments.bwb --config=mtm_jax/configs/bwb.py:full --sessions_dir=<BWB root> --workdir=...

<BWB root> holds <build>/ibl_brain_wide_bench_2026/<eval|pretrain>/<eid>.h5 (builds all_units
and selected_units). Writes <workdir>/submission/<label>/..., <workdir>/<label>.zip,
<workdir>/ground_truth/ and <workdir>/bwb_scores.md / .json. Finished runs and prediction
files are reused, so a re-run resumes; --only_analyse trains nothing.
"""

from absl import flags

from experiments import study
from mtm_jax.bwb import benchmark
from mtm_jax.training import entry

_CONFIG, _WORKDIR, _ONLY_ANALYSE = study.define_flags("mtm_jax/configs/bwb.py:small")
_SESSIONS = flags.DEFINE_string("sessions_dir", None, "BWB session folder (config.bwb.sessions_dir).")
_SUITES = flags.DEFINE_list("suites", None, "Suites to run, of ts1,ts2,ts3 (config.bwb.suites).")
_FAMILY = flags.DEFINE_string("family", None, "Run this family of config.study.families alone.")


def main(argv):
  study.start(argv, _WORKDIR.value)
  config = _CONFIG.value
  if _SESSIONS.value:
    config.bwb.sessions_dir = _SESSIONS.value
  if _SUITES.value:
    unknown = [s for s in _SUITES.value if s not in ("ts1", "ts2", "ts3")]
    if unknown:
      raise flags.ValidationError(f"--suites: unknown {unknown}; expected some of ts1, ts2, ts3")
    config.bwb.suites = tuple(_SUITES.value)
  if _FAMILY.value:
    if _FAMILY.value not in config.study.families and "builder" not in config.get(_FAMILY.value, {}):
      raise flags.ValidationError(
        f"--family={_FAMILY.value}: not in config.study.families {config.study.families} nor a config.<family>"
      )
    config.study.families = (_FAMILY.value,)
  benchmark.run(config, _WORKDIR.value, only_analyse=_ONLY_ANALYSE.value)


if __name__ == "__main__":
  entry.run(main)
