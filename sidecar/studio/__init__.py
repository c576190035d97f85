"""The studio: the artist's web page, served by the daemon at `/` (its own origin).

`static/` holds the page itself (small ES modules and CSS, no build step, no Node), shipped as package
data. The Python modules here read what the pages show and that the API does not already serve: the
pipeline project's chapters, pages and versions (`project.py`), a training folder's images and
captions (`dataset.py`), and the one-time login that gives a browser the daemon's token as a cookie
(`session.py`). The routes are in `sidecar/api/studio.py`, `project.py`, `dataset.py`, `doctor.py`.
"""
