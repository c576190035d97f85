"""LoRA training, the daemon's side: the kohya_ss adapter (`kohya.py`, `parser.py`), the embedded trainer
(`embedded.py`, `kohya_format.py`), the run manager and its store (`manager.py`, `store.py`), dataset
checks (`dataset.py`), installing a checkpoint (`promote.py`) and reading LoRA files' metadata
(`lora_metadata.py`). The HTTP routes are `sidecar.api.training`; the `sidecar loras` client is
`sidecar.loras`.
"""
