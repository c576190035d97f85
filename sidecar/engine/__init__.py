"""The embedded generation engine: runs our API-format workflows in process with diffusers + torch.

`backend.EmbeddedBackend` is the entry point (the `GenerationBackend` the daemon drives); the rest are
its parts: device choice, models dir + loading, warm cache, LoRA merging, samplers, the workflow
interpreter, the renderer, tiny test models (SD1.5 and SDXL: `convert_sdxl`, `tiny_sdxl`). Importing this
package does not import torch.
"""
