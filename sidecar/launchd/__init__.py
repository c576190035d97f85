"""launchd user agents for the daemon and ComfyUI (macOS): `agents` renders, installs and reads them
(the doctor uses it too), `cli` is `sidecar launchd install|uninstall|status`."""
