"""Devices: the mesh, the batch layout over processes and the parameter shardings
(used alike by training and evaluation)."""
