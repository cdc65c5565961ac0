"""Event-tokenised spiking data for POYO and spike-token MtM, one module per idea (see docs/event_data.md).

  session     the session schema, its validation, splits and per-interval data
  vocabulary  the embedding rows of units and sessions, and the records a checkpoint keeps
  windows     how windows are cut (WindowConfig), one split ready to cut (EventData, prepare)
  tokens      token types, batch keys, the tokens of one window, buckets and padding (collate)
  batches     training and evaluation batches (grain MapDatasets), bucket usage
  stitching   evaluation predictions put back on the sessions' timelines
  trials      whole trials as tokens with their binned counts (spike-token MtM's batches)
  binning     spike counts of any session in regular bins of given intervals (bin_spikes)
  tfds        a session read back from a built spike_events data set

Import the module you need (`from mtm_jax.datasets.events import windows`); this package
holds nothing else.
"""
