"""`sidecar loras`: the command-line client of the daemon's training API (train, status, cancel,
resume, runs, list in `runs.py`; checkpoint sweeps in `sweep.py`, their contact sheet in `sheet.py`;
promote in `cli.py`). It talks to the daemon over HTTP only (`client.py`): staging a checkpoint for a
sweep and installing one are the daemon's (`sidecar.training.staging`, `.promote`).
"""
