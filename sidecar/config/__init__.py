"""One typed settings model for the daemon and its tools.

Precedence: command-line flags > `SIDECAR_*` environment > TOML file (`--config`, default
`~/.config/plasma-sidecar/config.toml`) > defaults. `load_settings` also says where each value came
from (for `sidecar config show`). A bad value raises `ConfigError` naming the key, before anything starts.

The package's modules: `model.py` (the `Settings` model), its tables `backends.py` (`[[backends]]`) and
`remote.py` (`[remote.vast]`, `[remote.ssh]`), `storage.py` (`[storage]`), `load.py` (the sources, merged, and the client's token),
`defaults.py` (addresses and places every tool shares). What the rest of the code uses is named here.
"""

from sidecar.config.defaults import DEFAULT_DAEMON_URL, http_url, normalize_origin
from sidecar.config.load import client_token, load_settings
from sidecar.config.model import Settings

__all__ = ["DEFAULT_DAEMON_URL", "Settings", "client_token", "http_url", "load_settings", "normalize_origin"]
