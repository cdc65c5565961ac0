"""The raster figure: files written, numbers right, bad input."""

import matplotlib.image
import numpy as np
import pytest

from mtm_jax.evaluation import plots

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_width=200, min_height=150):
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  assert image.shape[0] >= min_height and image.shape[1] >= min_width
  assert image[..., :3].std() > 0.01  # not a blank canvas
  return image


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
