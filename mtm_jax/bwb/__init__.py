"""IBL's BrainWideBench (BWB, 2026) in mtm_jax (docs/bwb.md): its metrics as the official scorer
(ibl-bwb-eval 0.1.0) computes them (metrics), its submission files and the leaderboard's upload
checks (submission, validation), local scoring against ground-truth files (scoring), and a trained
model's predictions on BWB windows, any family (predict)."""
