"""Hardware profiles as data, and the limit checks the API applies before anything reaches an engine.

A profile is one row of the design's limits table. `m1pro-16gb` (the artist's laptop) is the
default; others are chosen in config. The checks raise our coded 400 errors with the limit named.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.errors import BatchSizeNotSupported, InvalidField, ResolutionExceedsProfile


@dataclass(frozen=True)
class Profile:
    name: str
    max_width: int
    max_height: int
    max_batch: int = 1
    max_train_batch: int = 1
    max_train_resolution: int = 512
    max_controlnets: int = 1
    base_model: str = "sd15"
    description: str = ""

    def check_resolution(self, width: int, height: int) -> None:
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 8:
                raise InvalidField(
                    f"resolution.{name} must be a positive multiple of 8, got {value}.",
                    {"field": f"resolution.{name}", "value": value},
                )
        if width > self.max_width or height > self.max_height:
            raise ResolutionExceedsProfile(
                f"Resolution {width}x{height} exceeds the {self.name} profile limit of "
                f"{self.max_width}x{self.max_height} (width <= {self.max_width}, height <= {self.max_height}).",
                {
                    "profile": self.name,
                    "limit": {"maxWidth": self.max_width, "maxHeight": self.max_height},
                    "requested": {"width": width, "height": height},
                },
            )

    def check_batch(self, batch_size: int, *, training: bool = False) -> None:
        limit = self.max_train_batch if training else self.max_batch
        if not 1 <= batch_size <= limit:
            what = "training" if training else "generation"
            raise BatchSizeNotSupported(
                f"Batch size {batch_size} is not supported: the {self.name} profile allows a "
                f"{what} batch size of at most {limit}.",
                {"profile": self.name, "limit": limit, "requested": batch_size},
            )

    def check_train_resolution(self, resolution: int) -> None:
        if resolution > self.max_train_resolution:
            raise ResolutionExceedsProfile(
                f"Training resolution {resolution} exceeds the {self.name} profile limit of "
                f"{self.max_train_resolution}.",
                {"profile": self.name, "limit": self.max_train_resolution, "requested": resolution},
            )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="m1pro-16gb",
            max_width=512,
            max_height=768,
            description="Apple M1 Pro, 16 GB unified memory: SD1.5 only, 512x768, batch 1",
        ),
        Profile(
            name="cuda-24gb",
            max_width=1024,
            max_height=1024,
            max_train_resolution=768,
            description="A 24 GB CUDA card: SD1.5 up to 1024 px, batch 1",
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def known_profile(name: str) -> str:
    """`name`, when a profile has it: the one check of a `profile` setting (pydantic shows the message)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    return name
