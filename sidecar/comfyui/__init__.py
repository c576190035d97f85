"""The ComfyUI backend: `backend.ComfyBackend` (the `GenerationBackend`), `client` (HTTP + the one
WebSocket), `follow` (one prompt to its end), `images` (fetch + black check), `pose` (LoadImage input),
`supervisor` (managed mode: the ComfyUI process). Import the submodules; nothing is re-exported here.
"""
