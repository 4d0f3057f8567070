"""Training configs (ml_collections) of both stages; `configs/*.py` at the repository top
level re-export them as the files users pass to `train.py --config=...`."""
