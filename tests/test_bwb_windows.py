"""TS2 window starts (mtm_jax.bwb.windows) against hand-checked values and against real torch.

The torch comparison runs parity/bwb_windows.py in the BrainWideBench environment
(parity/.bwb-venv, `make bwb-env`, or $MTM_BWB_PYTHON) on 2,000 random intervals and requires
every start to be equal in float64; without that environment it is skipped, with the reason.
"""

import json
import os
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from mtm_jax.bwb import windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exact_fma(a, b, c):
  return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_fma_is_correctly_rounded():
  rng = np.random.default_rng(0)
  a = np.concatenate([np.full(3000, 0.02), rng.uniform(-1, 1, 3000) * 10.0 ** rng.integers(-8, 8, 3000)])
  b = np.concatenate([rng.integers(0, 40000, 3000).astype(float), rng.uniform(-1e4, 1e4, 3000)])
  c = np.concatenate([rng.uniform(0, 6000, 3000), rng.uniform(-1, 1, 3000) * 10.0 ** rng.integers(-8, 8, 3000)])
  got = windows.fma(a, b, c)
  want = np.array([_exact_fma(x, y, z) for x, y, z in zip(a, b, c)])
  assert np.array_equal(got, want)
  # a case where rounding the product first gives another double than one fused rounding
  x, y, z = 0.1, 3.0, -0.30000000000000004
  assert windows.fma(x, y, z)[()] == _exact_fma(x, y, z) != x * y + z


def test_hand_checked_starts():
  # [0, 1.1): 56 values; t + 1 <= 1.1 keeps 0 .. 0.1 (0.08 + 0.02 is 0.1 exactly), and the
  # last window ends at 1.1 itself: no extra window
  got = windows.window_starts([0.0], [1.1])
  assert got.tolist() == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]
  # [0, 1.05): 0, 0.02, 0.04 fit; the last ends at 1.04 < 1.05, so 1.05 - 1.0 (not 0.05) follows
  got = windows.window_starts([0.0], [1.05])
  assert got.tolist() == [0.0, 0.02, 0.04, 1.05 - 1.0] and got[-1] != 0.05
  assert windows.torch_arange(0.0, 0.2, 0.02)[8] == 0.16
  # an interval of exactly one window gives one window, no extra one
  assert windows.window_starts([5.0], [6.0]).tolist() == [5.0]
  # the fused and the unfused kernels differ (here at element 3 of a vector)
  a, b = windows.torch_arange(0.43, 2.0, 0.02), windows.torch_arange(0.43, 2.0, 0.02, kernel="default")
  assert a.size == b.size == 79 and not np.array_equal(a, b)
  # not start + k * step, nor np.arange
  t = windows.torch_arange(1234.567, 1260.0, 0.02)
  assert not np.array_equal(t, 1234.567 + 0.02 * np.arange(t.size))


def test_short_intervals_and_bad_input():
  with pytest.raises(ValueError, match="shorter than the window"):
    windows.window_starts([0.0, 3.0], [2.0, 3.5])
  assert windows.window_starts([0.0, 3.0], [2.0, 3.5], drop_short=True).size == 51
  with pytest.raises(ValueError, match=r"expected \(I,\)"):
    windows.window_starts([0.0, 1.0], [2.0])
  with pytest.raises(ValueError, match="kernel"):
    windows.torch_arange(0.0, 1.0, 0.02, kernel="neon")
  with pytest.raises(ValueError, match="exceed"):
    windows.torch_arange(0.0, 1000.0, 0.02)


def test_intersect_is_temporaldata():
  s, e = windows.intersect([0.0, 10.0], [5.0, 20.0], [3.0, 12.0], [11.0, 30.0])
  assert s.tolist() == [3.0, 10.0, 12.0] and e.tolist() == [5.0, 11.0, 20.0]


def _scorer_python() -> str:
  python = os.environ.get("MTM_BWB_PYTHON") or os.path.join(ROOT, "parity", ".bwb-venv", "bin", "python")
  if not os.path.exists(python):
    pytest.skip("no BrainWideBench environment with torch (parity/.bwb-venv or $MTM_BWB_PYTHON): run `make bwb-env`")
  return python


def _random_intervals(rng, n):
  starts = np.concatenate(
    [rng.uniform(0, 6000, n // 2), rng.uniform(0, 2, n // 4), rng.uniform(0, 50000, n - n // 2 - n // 4)]
  )
  lengths = rng.uniform(1.0, 16.0, n)
  lengths[::7] = 1.0 + 0.02 * rng.integers(0, 500, lengths[::7].size)  # whole numbers of steps
  lengths[::11] = 1.0
  return starts, starts + lengths


@pytest.mark.parametrize("capability,kernel", [(None, "avx2"), ("default", "default")])
def test_starts_equal_torch_bit_for_bit(tmp_path, capability, kernel):
  python = _scorer_python()
  starts, ends = _random_intervals(np.random.default_rng(7), 2000)
  src, dst = tmp_path / "intervals.json", tmp_path / "starts.json"
  spec = {"starts": [x.hex() for x in starts], "ends": [x.hex() for x in ends], "window": 1.0, "step": 0.02}
  src.write_text(json.dumps(spec))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATEN_CPU_CAPABILITY")}
  if capability:
    env["ATEN_CPU_CAPABILITY"] = capability
  script = os.path.join(ROOT, "parity", "bwb_windows.py")
  result = subprocess.run([python, script, str(src), str(dst)], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  theirs = json.loads(dst.read_text())
  if kernel == "avx2" and theirs["capability"] not in ("AVX2", "AVX512"):
    pytest.skip(f"torch runs its {theirs['capability']} kernel here, not the AVX2 one")
  total = short = 0
  for s, e, want in zip(starts, ends, theirs["starts"], strict=True):
    if want == "short":  # end - start rounds below the window: the sampler raises, and so do we
      with pytest.raises(ValueError, match="shorter than the window"):
        windows.window_starts([s], [e], kernel=kernel)
      short += 1
      continue
    got = windows.window_starts([s], [e], kernel=kernel)
    assert [x.hex() for x in got] == want, (s.hex(), e.hex())
    total += got.size
  assert total > 100000 and short < 200
  # a whole session at once: the concatenation, in order
  ok = [i for i, w in enumerate(theirs["starts"][:100]) if w != "short"]
  want = [float.fromhex(x) for i in ok for x in theirs["starts"][i]]
  assert np.array_equal(windows.window_starts(starts[ok], ends[ok], kernel=kernel), want)
