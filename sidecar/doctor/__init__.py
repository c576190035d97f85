"""`sidecar doctor`: what is installed, what is missing, and how to fix it, one line per check; and
`--bench`, the hardware check of INFRA-04 (512x512, 20 steps, Euler a, the configured checkpoint,
under 2 minutes) through a running daemon or, when none answers, an in-process one.

Which checks are required depends on the engine: with the embedded engine ComfyUI is optional, with
`comfyui` it is required. Exit codes: 0 nothing required is missing (and the bench passed), 1 something
required is missing or the bench failed or was too slow, 2 configuration error, 4 device busy training.

Modules: `checks` (one function per check, and the network probe shared by them), `bench` (the
INFRA-04 render), `cli` (the command, its table and exit code).
"""
