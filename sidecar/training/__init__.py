"""LoRA training: the kohya_ss adapter (`kohya.py`, `parser.py`), the embedded trainer (`embedded.py`,
`kohya_format.py`), the run manager and its store (`manager.py`, `store.py`), dataset checks
(`dataset.py`), and picking a checkpoint (`sweep.py`, `promote.py`, `cli.py`). The HTTP routes are
`sidecar.api.training`.
"""
