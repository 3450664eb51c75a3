"""The known SA3 families (and tiny test families of the same topology) and lookups on them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sa3ckpt.names.select import select
from sa3ckpt.targets.topology import Target, Topology, build_targets


@dataclass(frozen=True)
class Family:
    """A named model family: its topology, targets and the `base_model` names it goes by."""

    name: str
    description: str
    topology: Topology
    base_model_names: tuple[str, ...]
    test_only: bool = False
    targets: tuple[Target, ...] = field(init=False)
    by_name: Mapping[str, Target] = field(init=False)

    def __post_init__(self) -> None:
        targets = build_targets(self.topology)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "by_name", {t.name: t for t in targets})

    @property
    def dit_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.group != "conditioner")

    def target(self, name: str) -> Target | None:
        return self.by_name.get(name)

    def selected(self, include: list[str] | None, exclude: list[str] | None) -> list[Target]:
        """Targets an adapter with this include/exclude would cover, in table order."""
        names = select((t.name for t in self.targets), include, exclude)
        return [self.by_name[n] for n in names]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "medium",
            "SA3 medium (base and ARC): E=1536, 24 blocks, differential attention",
            Topology(embed_dim=1536, depth=24, differential=True),
            ("sa3-medium", "sa3-md", "stable-audio-3-medium"),
        ),
        Family(
            "small",
            "SA3 small (music and sfx): E=1024, 20 blocks",
            Topology(embed_dim=1024, depth=20, differential=False),
            ("sa3-small", "sa3-sm", "sa3-sm-music", "sa3-sm-sfx", "stable-audio-3-small"),
        ),
        Family(
            "tiny-medium",
            "test family: medium topology (differential) at toy size",
            Topology(
                embed_dim=16,
                depth=2,
                differential=True,
                io_channels=8,
                cond_token_dim=12,
                timestep_features=8,
                seconds_features=8,
                global_mult=6,
                ff_mult=4,
                head_dim=8,
            ),
            ("tiny-medium",),
            test_only=True,
        ),
        Family(
            "tiny-small",
            "test family: small topology at toy size, Conv1d kernel 3 to exercise k>1 layouts",
            Topology(
                embed_dim=12,
                depth=3,
                differential=False,
                io_channels=8,
                cond_token_dim=10,
                timestep_features=6,
                seconds_features=6,
                global_mult=6,
                ff_mult=4,
                conv_kernel=3,
                head_dim=4,
            ),
            ("tiny-small",),
            test_only=True,
        ),
    )
}

PUBLISHED_FAMILIES = tuple(name for name, f in FAMILIES.items() if not f.test_only)


def family(name: str) -> Family:
    """Look up a family by name with an error that lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def family_for_base_model(base_model: str) -> Family | None:
    """The family a `base_model` metadata string names (case-insensitive prefix match)."""
    lowered = base_model.strip().lower()
    best: tuple[int, Family] | None = None
    for fam in FAMILIES.values():
        for alias in fam.base_model_names:
            if (
                lowered == alias
                or lowered.startswith(alias + "-")
                or lowered.startswith(alias + "_")
            ) and (best is None or len(alias) > best[0]):
                best = (len(alias), fam)
    return best[1] if best else None
