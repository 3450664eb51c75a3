"""`lora_config`: the adapter's metadata, parsed strictly and written back without loss.

Writers add fields we do not model (step, epoch, base_model, target, ...). They are kept in
`extra` and written back verbatim, so a load/save round trip never drops provenance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

CONFIG_KEY = "lora_config"


class ConfigError(ValueError):
    """lora_config is missing or does not describe an adapter; the message says which field."""


@dataclass
class LoraConfig:
    """rank, alpha, adapter_type, include, exclude + every other field as written."""

    rank: int
    alpha: int | float  # kept as written (8 stays 8, not 8.0)
    adapter_type: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """c = alpha / rank, the factor in front of every low-rank update."""
        return self.alpha / self.rank

    @property
    def base_model(self) -> str | None:
        value = self.extra.get("base_model")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            rank=self.rank,
            alpha=self.alpha,
            adapter_type=self.adapter_type,
            include=list(self.include),
            exclude=list(self.exclude),
        )
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Any) -> LoraConfig:
        if not isinstance(raw, dict):
            raise ConfigError("lora_config is not a JSON object")
        data = dict(raw)
        rank = data.pop("rank", None)
        alpha = data.pop("alpha", None)
        adapter_type = data.pop("adapter_type", None)
        include = data.pop("include", None) or []
        exclude = data.pop("exclude", None) or []
        if rank is None:
            raise ConfigError("lora_config has no rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ConfigError(f"lora_config rank {rank!r} is not a positive integer")
        if alpha is None:
            raise ConfigError("lora_config has no alpha")
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
        ):
            raise ConfigError(f"lora_config alpha {alpha!r} is not a finite number")
        if not isinstance(adapter_type, str) or not adapter_type:
            raise ConfigError("lora_config has no adapter_type")
        patterns = {}
        for name, value in (("include", include), ("exclude", exclude)):
            value = [value] if isinstance(value, str) else value  # a lone pattern is allowed
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"lora_config {name} is not a list of strings")
            patterns[name] = list(value)
        return cls(rank, alpha, adapter_type, patterns["include"], patterns["exclude"], data)

    @classmethod
    def from_json(cls, text: str) -> LoraConfig:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"lora_config is not valid JSON ({exc})") from None
        return cls.from_dict(raw)
