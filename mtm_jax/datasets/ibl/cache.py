"""The ONE cache of IBL sessions: opening it offline, building its tables, session ids, listing sessions.

A ONE cache root holds sessions as `<lab>/Subjects/<subject>/<date>/<number>/` folders and
the cache tables `sessions.pqt` + `datasets.pqt`. It is read with one-api in local mode
(`one.api.One(cache_dir=root, mode='local')`: never the network); when the tables are
missing they are built with one-api's `one.alf.cache.make_parquet_db`, each session's eid
then a uuid3 (like one-api's own ids) of its `<lab>/<subject>/<date>/<number>`
(session_eid: the same at every rebuild of the tables).
"""

from __future__ import annotations

import os
import tempfile
import uuid

from absl import logging

from mtm_jax.datasets.ibl import alf
from mtm_jax.datasets.ibl import configs

CACHE_TABLES = ("sessions.pqt", "datasets.pqt")
# Namespace of the eids of sessions in cache tables this project builds (session_eid).
SESSION_NAMESPACE = uuid.uuid3(uuid.NAMESPACE_URL, "mtm_jax/ibl-session")


def open_cache(root: str):
  """one.api.One on a local cache root, offline; builds the cache tables when missing
  (make_cache_tables). Tables that exist are used as they are."""
  from one import api as one_api  # one-api is imported only for IBL sources

  root = os.path.abspath(os.path.expanduser(str(root)))
  if not os.path.isdir(root):
    raise alf.IblDataError(
      f"{root}: not a directory; expected a ONE cache root holding "
      f"<lab>/Subjects/<subject>/<date>/<number>/alf/ session folders"
    )
  if not all(os.path.isfile(os.path.join(root, t)) for t in CACHE_TABLES):
    logging.info("%s: no ONE cache tables; building them with one.alf.cache.make_parquet_db", root)
    make_cache_tables(root)
  return one_api.One(cache_dir=root, mode="local")


def session_eid(session_id: str) -> str:
  """The eid given to a session when this project builds the cache tables: a uuid3 (like
  one-api's own ids) of one-api's relative session id `<lab>/<subject>/<date>/<number>`,
  so the same on every machine and at every rebuild of the tables."""
  return str(uuid.uuid3(SESSION_NAMESPACE, session_id))


def make_cache_tables(root: str) -> None:
  """Writes the cache tables of root with one-api's make_parquet_db (its session ids are
  relative session paths), then gives sessions their session_eid and datasets a uuid3 of
  (eid, relative path). Each table is written to a temporary file and renamed."""
  from iblutil.io import parquet  # pylint: disable=g-import-not-at-top  (a one-api dependency)
  from one.alf import cache as one_cache  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(dir=root, prefix=".cache_tables.") as tmp:
    one_cache.make_parquet_db(root, out_dir=tmp, hash_ids=False)
    (sessions, ses_meta), (datasets, dsets_meta) = (parquet.load(os.path.join(tmp, t)) for t in CACHE_TABLES)
    eids = {i: session_eid(i) for i in sessions["id"]}
    sessions = sessions.assign(id=sessions["id"].map(eids)).set_index("id").sort_index()
    eid = datasets["eid"].map(eids)
    ids = [str(uuid.uuid3(uuid.UUID(e), r)) for e, r in zip(eid, datasets["rel_path"])]
    datasets = datasets.assign(eid=eid, id=ids).set_index(["eid", "id"]).sort_index()
    for name, table, meta in zip(CACHE_TABLES, (sessions, datasets), (ses_meta, dsets_meta)):
      parquet.save(os.path.join(tmp, f"{name}.new"), table, meta)
    for name in CACHE_TABLES:
      os.replace(os.path.join(tmp, f"{name}.new"), os.path.join(root, name))


def list_sessions(root: str) -> list[dict]:
  """The sessions of a cache root whose folder exists: eid, path, probe collections."""
  one = open_cache(root)
  out = []
  for eid in one.search():
    path = one.eid2path(eid)
    if path is None or not os.path.isdir(path):
      continue
    probes = alf.probe_collections(alf.dataset_files(one, eid), configs.IblOptions().sorters, strict=False)
    out.append(dict(eid=str(eid), path=os.path.relpath(str(path), one.cache_dir), probes=sorted(probes.values())))
  return out
