"""Concepts: a scene or a character idea as structured fields (subject, pose, expression, outfit,
background, style, mood, lighting, extra tags), each lockable, kept as `concepts/NAME.toml` in the
pipeline project, composed into a prompt by the local LLM (or from the fields as written when it is
absent), rendered in rounds of four variations and steered by the artist's picks, rejections and words,
which accumulate in `concepts/NAME.intent.json`.

The model only ever proposes; code decides (`compose.py`, `interpret.py`), as in `sidecar.assist`:
locked fields and the character's traits (`character.toml`) come through verbatim whatever it answers.
The routes (`sidecar.api.concepts`) submit the rounds' jobs; nothing here knows the job runner.
"""
