"""The likeness judge: is this image the character? A score per image against the character's
reference set (`references` in `character.toml`), higher = more alike, and a verdict (`same`,
`unsure`, `different`).

- `ccip`: CCIP (deepghs' character-similarity model for anime-style images) on onnxruntime, with
  exactly the reference implementation's preprocessing; the one scorer so far.
- `normalise`: the arithmetic that turns CCIP differences into scores and verdicts (pure, property-tested).
- `judge`: references + scorer + a cache by image hash; what the daemon and the commands call.
- `references`, `fetch` (`sidecar models fetch ccip`), `tiny` (`sidecar models make-tiny`'s random model).

Weights are never downloaded at job time: without them every likeness feature raises
`likeness_unavailable` naming the fetch command, and everything else works.
"""
