"""Assistants on a local Ollama: prompt refinement (feedback -> a validated change set -> a prompt that
keeps the character's trigger word and locked traits) and the pieces caption proposals share.

The model only ever proposes; code decides (`apply.py`). Ollama is reached through the official
`ollama` client in `ollama_client.py`, the one place its failures become our error codes.
"""
