"""Cloud storage for datasets, LoRAs and outputs: the `[storage]` bucket (gs://, s3://, file://) through
fsspec (gcsfs, s3fs: the `[storage]` extra), and `sidecar sync`.

Modules: `store.py` opens the store from the settings and turns its failures into our codes;
`manifest.py` the sha256 manifests and the local record of the last synced state; `plan.py` decides what
moves (three-way: here, there, and the last sync); `transfer.py` moves files so that a partial one is never
visible; `sync.py` runs one sync; `cli.py` is `sidecar sync push|pull`.
"""
