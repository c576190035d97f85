"""`sidecar loras`: the command-line client of the daemon's training API (train, status, cancel,
resume, runs, list in `runs.py`; checkpoint sweeps in `sweep.py`; promote in `cli.py`). It talks to
the daemon over HTTP only (`client.py`); the trainer side is `sidecar.training`.
"""
