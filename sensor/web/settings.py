"""The ``[web]`` configuration keys (``OPTIONS``; ``mamori.sensor.schema`` holds them all).

Kept free of web-framework imports so ``mamori run`` and ``mamori check-config`` know
the keys without loading Starlette.
"""

from __future__ import annotations

from pathlib import Path

from mamori.sensor import configkit as cfg

DEFAULT_PORT = 8470

OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("web", "enabled", False, cfg.v_bool,
               "'mamori run' also serves the operator web page (or: mamori run --web)"),
    cfg.Option("web", "bind", "127.0.0.1", cfg.v_nonempty_str,
               "address the web page listens on; anything but loopback needs "
               "management_interface, and a capture interface's address is refused"),
    cfg.Option("web", "port", DEFAULT_PORT, cfg.v_int_range(0, 65535),
               "TCP port of the web page (0: any free port, for tests)"),
    cfg.Option("web", "management_interface", "", cfg.v_str,
               "name of the management interface the page may be served on"),
    cfg.Option("web", "token_file", Path("web/token"), cfg.v_path,
               "login token file, mode 0600 (relative to state_dir); 'mamori web token'"),
    cfg.Option("web", "session_lifetime", 12 * 3600.0, cfg.v_seconds,
               "a login session expires after this long"),
    cfg.Option("web", "page_size", 50, cfg.v_int_range(10, 500),
               "alerts per page"),
)


def token_path(config: cfg.Config) -> Path:
    """The token file: absolute, or relative to ``[sensor] state_dir``."""
    return config.state_path("web", "token_file")
