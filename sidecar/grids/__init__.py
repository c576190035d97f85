"""Grids: every combination of some job parameters rendered through the daemon into one labelled
contact sheet and an index (`sidecar grid`; the LoRA checkpoint sweep is a grid over checkpoints)."""
