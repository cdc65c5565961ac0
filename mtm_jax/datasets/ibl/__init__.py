"""IBL Neuropixels sessions from a local ONE cache (ALF files) -> binned trials and event sessions.

Callers import the module they need:
  configs     IblOptions (how a session is preprocessed) and the builder config names encoding them;
  alf         reading and validating a session's ALF files (read_session); IblDataError;
  cache       the ONE cache: open_cache (offline), its tables, session_eid, list_sessions;
  preprocess  trial selection, binning and behaviour as the MtM reference (preprocess, load_session);
  convert     a preprocessed session -> event session for POYO (event_session).
"""
