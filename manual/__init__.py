"""The manual's generated reference pages, built from the code at `mkdocs build` time (see `hooks.py`,
named by mkdocs.yml), so the settings, commands, HTTP API and error codes it lists cannot drift from what
the code does. Nothing here ships in the wheel or runs in the daemon."""
