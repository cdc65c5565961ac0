"""Scaling figure/summary/table and raster figure: files written, numbers right, bad input."""

import csv
import io
import math

import matplotlib.image
import numpy as np
import pytest

from mtm_jax.evaluation import plots

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rows_csv():
  """Hand-made scaling results as csv.DictReader returns them (all strings).

  mtm co_smoothing at 1 pretraining session: 0.1, 0.2, 0.3 on s1..s3 (mean 0.2, std 0.1).
  """
  lines = ["pretrain_sessions,mode,session,metric,value"]
  values = {
    ("mtm", 0): (0.05, 0.07, 0.09),
    ("mtm", 1): (0.1, 0.2, 0.3),
    ("mtm", 4): (0.3, 0.4, 0.5),
    ("temporal", 0): (0.04, 0.04, 0.04),
    ("temporal", 1): (0.1, 0.1, 0.4),
    ("temporal", 4): (0.2, 0.2, 0.2),
  }
  for (mode, count), vals in values.items():
    for s, v in enumerate(vals):
      lines.append(f"{count},{mode},s{s + 1},co_smoothing_bps,{v}")
      lines.append(f"{count},{mode},s{s + 1},inter_region_bps,{v + 1}")
  return list(csv.DictReader(io.StringIO("\n".join(lines))))


def _check_png(path, min_width=200, min_height=150):
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  assert image.shape[0] >= min_height and image.shape[1] >= min_width
  assert image[..., :3].std() > 0.01  # not a blank canvas
  return image


def test_scaling_summary_numbers():
  summary = plots.scaling_summary(_rows_csv())
  assert len(summary) == 2 * 2 * 3
  keys = [(e["metric"], e["mode"], e["pretrain_sessions"]) for e in summary]
  assert keys == sorted(keys)
  by_key = {(e["metric"], e["mode"], e["pretrain_sessions"]): e for e in summary}
  e = by_key[("co_smoothing_bps", "mtm", 1)]
  assert e["n"] == 3 and e["sessions"] == ["s1", "s2", "s3"]
  assert e["mean"] == pytest.approx(0.2) and e["std"] == pytest.approx(0.1)
  assert (e["min"], e["max"]) == pytest.approx((0.1, 0.3))
  e = by_key[("inter_region_bps", "temporal", 1)]
  assert e["mean"] == pytest.approx(1.2) and e["std"] == pytest.approx(np.std([0.1, 0.1, 0.4], ddof=1))
  assert by_key[("co_smoothing_bps", "temporal", 4)]["std"] == pytest.approx(0.0)
  one = plots.scaling_summary([{"pretrain_sessions": 2, "mode": "mtm", "session": "a", "metric": "m", "value": 0.5}])
  assert one[0]["n"] == 1 and one[0]["mean"] == 0.5 and math.isnan(one[0]["std"])


def test_scaling_table_cells():
  table = plots.scaling_table(_rows_csv())
  lines = table.splitlines()
  assert lines[0] == "| metric | pretraining sessions | mtm | temporal |"
  assert lines[2] == "| co_smoothing_bps | scratch | 0.0700 ± 0.0200 | 0.0400 ± 0.0000 |"
  assert lines[3] == "| co_smoothing_bps | 1 | 0.2000 ± 0.1000 | 0.2000 ± 0.1732 |"
  assert lines[4] == "| co_smoothing_bps | 4 | 0.4000 ± 0.1000 | 0.2000 ± 0.0000 |"
  assert lines[5].startswith("| inter_region_bps | scratch | 1.0700 ± 0.0200 |")
  assert len(lines) == 2 + 2 * 3
  # a mode missing for one count is "-"
  partial = [r for r in _rows_csv() if not (r["mode"] == "temporal" and r["pretrain_sessions"] == "4")]
  assert "| co_smoothing_bps | 4 | 0.4000 ± 0.1000 | - |" in plots.scaling_table(partial)


def test_panel_series_band():
  rows = _rows_csv()
  series = plots._panel_series(plots.scaling_summary(rows), "co_smoothing_bps")
  assert series["band"] == "std" and series["n_sessions"] == 3
  mtm = series["modes"]["mtm"]
  assert mtm["x"].tolist() == [1, 4] and mtm["scratch"] == pytest.approx(0.07)
  np.testing.assert_allclose(mtm["low"], [0.1, 0.3])
  np.testing.assert_allclose(mtm["high"], [0.3, 0.5])
  two = [r for r in rows if r["session"] != "s3"]  # 2 sessions: min-max band
  series = plots._panel_series(plots.scaling_summary(two), "co_smoothing_bps")
  assert series["band"] == "min-max"
  np.testing.assert_allclose(series["modes"]["temporal"]["low"], [0.1, 0.2])
  np.testing.assert_allclose(series["modes"]["temporal"]["high"], [0.1, 0.2])
  np.testing.assert_allclose(series["modes"]["mtm"]["high"], [0.2, 0.4])


def test_scaling_figure_writes_png(tmp_path):
  rows = _rows_csv()
  one = tmp_path / "new" / "dir" / "one.png"
  plots.scaling_figure(rows, one, metrics=["inter_region_bps"])
  both = tmp_path / "both.png"
  plots.scaling_figure(rows, str(both))
  narrow, wide = _check_png(one), _check_png(both)
  assert wide.shape[1] > 1.4 * narrow.shape[1]  # one panel per metric
  # only 2 held-out sessions and no scratch rows: still drawn
  plots.scaling_figure(
    [r for r in rows if r["session"] != "s3" and r["pretrain_sessions"] != "0"], tmp_path / "two.png"
  )
  _check_png(tmp_path / "two.png")


def test_scaling_bad_rows(tmp_path):
  rows = _rows_csv()
  for key in plots.SCALING_KEYS:
    bad = [dict(r) for r in rows]
    del bad[3][key]
    with pytest.raises(ValueError, match=rf"rows\[3\] lacks key '{key}'"):
      plots.scaling_figure(bad, tmp_path / "bad.png")
  assert not (tmp_path / "bad.png").exists()
  bad = [dict(r) for r in rows]
  bad[0]["pretrain_sessions"] = "1.5"
  with pytest.raises(ValueError, match="pretrain_sessions must be an integer"):
    plots.scaling_summary(bad)
  bad[0]["pretrain_sessions"], bad[0]["value"] = "1", "high"
  with pytest.raises(ValueError, match="value must be a number"):
    plots.scaling_table(bad)
  with pytest.raises(ValueError, match="two values for metric"):
    plots.scaling_summary(rows + rows[:1])
  with pytest.raises(ValueError, match="not in rows"):
    plots.scaling_figure(rows, tmp_path / "x.png", metrics=["forward_prediction_bps"])
  with pytest.raises(ValueError, match="rows is empty"):
    plots.scaling_table([])


@pytest.fixture
def raster_data():
  rng = np.random.default_rng(0)
  trials, time, neurons = 6, 10, 5
  rates = np.linspace(0.1, 2.0, neurons)[None, None, :] * np.ones((trials, time, 1))
  truth = rng.poisson(rates).astype(float)
  predictions = {
    "inter-region": {"MtM": rates * 0.9, "temporal": rates * 0.5},
    "intra-region": {"MtM": rates, "temporal": rates * 1.1},
  }
  return truth, predictions


def test_raster_panels(raster_data):
  truth, predictions = raster_data
  panels = plots._raster_panels(truth, predictions)
  mean_rate = truth.mean(axis=(0, 1))
  assert panels["order"].tolist() == np.argsort(-mean_rate, kind="stable").tolist()
  np.testing.assert_allclose(panels["truth"], truth.mean(axis=0).T[panels["order"]])
  np.testing.assert_allclose(
    panels["rows"]["inter-region"]["temporal"],
    (predictions["inter-region"]["temporal"].mean(axis=0).T)[panels["order"]],
  )
  assert panels["columns"] == ["MtM", "temporal"]
  given = plots._raster_panels(truth, predictions, neuron_order=[4, 0, 2])
  np.testing.assert_allclose(given["truth"], truth.mean(axis=0).T[[4, 0, 2]])
  # bin b is centred at -t_before + (b + 0.5) * bin_size
  left, right = plots._time_edges(100, 0.02, 0.5)
  assert (left, right) == pytest.approx((-0.5, 1.5))
  centres = left + (np.arange(100) + 0.5) * (right - left) / 100
  assert centres[0] == pytest.approx(-0.49) and centres[25] == pytest.approx(0.01)


def test_raster_figure_writes_png(tmp_path, raster_data):
  truth, predictions = raster_data
  path = tmp_path / "fig" / "raster.png"
  plots.raster_figure(path, truth, predictions, title="region LP")
  image = _check_png(path)
  one_row = tmp_path / "one_row.png"
  plots.raster_figure(
    one_row,
    truth,
    {"co-smoothing": {"MtM": predictions["inter-region"]["MtM"]}},
    neuron_order=[3, 1],
    bin_size=np.float32(0.05),
    t_before=0,
  )
  small = _check_png(one_row)
  assert image.shape[0] > 1.5 * small.shape[0] and image.shape[1] > small.shape[1]


def test_raster_bad_inputs(tmp_path, raster_data):
  truth, predictions = raster_data
  path = tmp_path / "bad.png"
  with pytest.raises(ValueError, match=r"truth must be a non-empty \[trials, time, neurons\]"):
    plots.raster_figure(path, truth[0], predictions)
  bad = {"inter-region": {"MtM": truth[:, :5]}}
  with pytest.raises(ValueError, match=r"predictions\['inter-region'\]\['MtM'\] must have the shape"):
    plots.raster_figure(path, truth, bad)
  with pytest.raises(ValueError, match="predictions must be a non-empty dict"):
    plots.raster_figure(path, truth, {})
  with pytest.raises(ValueError, match=r"predictions\['x'\] must be a non-empty dict"):
    plots.raster_figure(path, truth, {"x": truth})
  with pytest.raises(ValueError, match="neuron_order must be distinct neuron indices"):
    plots.raster_figure(path, truth, predictions, neuron_order=[0, 5])
  with pytest.raises(ValueError, match="neuron_order must be distinct neuron indices"):
    plots.raster_figure(path, truth, predictions, neuron_order=[1, 1])
  with pytest.raises(ValueError, match="bin_size must be a positive"):
    plots.raster_figure(path, truth, predictions, bin_size=0)
  with pytest.raises(ValueError, match="t_before must be a finite"):
    plots.raster_figure(path, truth, predictions, t_before=float("nan"))
  assert not path.exists()


def test_raster_colour_scale_follows_the_truth_not_a_models_outliers(tmp_path, raster_data, monkeypatch):
  """An undertrained model predicting 1000x rates no longer washes out the ground truth."""
  truth, predictions = raster_data
  wild = {row: {**models, "untrained": models["MtM"] * 1000.0} for row, models in predictions.items()}
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
  plots.raster_figure(tmp_path / "r.png", truth, wild)
  (fig,) = figures
  panels = plots._raster_panels(truth, wild)
  low, high = np.percentile(panels["truth"], [1, 99])
  image_axes = [ax for ax in fig.axes if ax.images]
  assert len(image_axes) == 2 * 4  # two rows: truth, MtM, temporal, untrained
  for ax in image_axes:
    assert np.allclose(ax.images[0].get_clim(), (low, high)), ax.get_title()
