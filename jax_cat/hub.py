"""Hugging Face hub reachability: fail at once offline instead of retrying for tens of seconds.

`go_offline_if_unreachable()` tries one TCP connection to the hub endpoint (a short deadline, DNS included); when
it fails it switches `huggingface_hub` and `datasets` to their offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE,
also in modules already imported), so an unknown or uncached name fails in well under a second with the caller's
message. An explicit HF_HUB_OFFLINE in the environment is left as the user set it.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlparse

__all__ = ["go_offline_if_unreachable", "hub_reachable", "is_offline", "short_reason"]

_TRUE = {"1", "true", "yes", "on"}
_checked: dict[str, bool] = {}


def is_offline() -> bool:
    """Whether the hub libraries are (or will be) in offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_reachable(timeout: float = 2.0) -> bool:
    """One TCP connection to the hub endpoint (HF_ENDPOINT, default huggingface.co:443) within `timeout` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key in _checked:
        return _checked[key]
    result = [False]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts: bound it here
    thread.start()
    thread.join(timeout)
    _checked[key] = result[0]
    return result[0]


def go_offline_if_unreachable(timeout: float = 2.0) -> bool:
    """Set the hub libraries offline when the hub cannot be reached; returns whether they are offline now."""
    if "HF_HUB_OFFLINE" in os.environ:
        return is_offline()
    if hub_reachable(timeout):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    constants = sys.modules.get("huggingface_hub.constants")  # already imported: they read the env at import
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True
        if hasattr(config, "HF_DATASETS_OFFLINE"):
            config.HF_DATASETS_OFFLINE = True
    return True


def short_reason(err: BaseException, limit: int = 200) -> str:
    """The first line of an error, cut to `limit` characters (hub errors can be paragraphs long)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return f"{type(err).__name__}: {text[:limit]}"
