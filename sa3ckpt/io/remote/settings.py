"""How remote inputs are fetched: timeouts, retries, redirects, credentials, TLS roots.

One process-wide `RemoteSettings` (the CLI sets it from its flags, the TUI and library
callers keep the defaults): the readers deep in `sa3ckpt.io` open URLs without every call
site passing options down. Changing the settings starts a new session (fresh connection pool
and cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sa3ckpt.errors import UsageError

FIRST_BYTES = 128 * 1024
"""The first request's range: covers the header of every real-size SA3 adapter (a medium
dora-rows adapter on all 229 targets has a 100 KB header), so one request usually suffices."""

HF_TOKEN_ENV = "HF_TOKEN"
"""The variable the hub's own tools read the token from (sent to the `hf://` hub only)."""


@dataclass(frozen=True)
class RemoteSettings:
    """Fetch policy. Times in seconds; `backoff` is the first retry's delay (doubling after)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    max_redirects: int = 10
    token_env: str | None = None  # the variable holding a token for the URLs given
    ca_bundle: str | None = None  # the TLS roots to trust instead of the system's; always verified
    first_bytes: int = FIRST_BYTES

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number")
        if self.retries < 0:
            raise UsageError("--retries must be 0 or more")
        if self.backoff < 0:
            raise UsageError("--retry-backoff must be 0 or more")
        if self.max_redirects < 0:
            raise UsageError("--max-redirects must be 0 or more")
        if self.first_bytes < 16:
            raise UsageError("the first range must be at least 16 bytes")
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise UsageError(f"--ca-bundle {self.ca_bundle}: no such file")
        if self.token_env is not None and not os.environ.get(self.token_env):
            raise UsageError(f"--token-env {self.token_env}: that environment variable is not set")
