"""Studies: many training runs of the tasks (mtm_jax.tasks) through the one trainer,
scored, tabulated and plotted (the MtM scaling study, POYO on new sessions)."""
