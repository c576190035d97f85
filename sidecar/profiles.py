"""Hardware profiles as data, and the limit checks the API applies before anything reaches an engine.

A profile is one row of the design's limits table. `m1pro-16gb` (the artist's laptop) is the
default; others are chosen in config. The checks raise our coded 400 errors with the limit named.

A profile lists the model families it runs (`sd15`, `sdxl`, `flux`: `sidecar.families`) and the sizes
each may render: SD 1.5 up to its profile's sides; SDXL and Flux by area, as their 1024-pixel training
buckets go (832x1216 and 1216x832 are as many pixels as 1024x1024). `for_family` is the profile as a
job of that family is held to it: the same checks, that family's sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sidecar.errors import BatchSizeNotSupported, InvalidField, ResolutionExceedsProfile


@dataclass(frozen=True)
class FamilySizes:
    """The sizes one family may render on a profile, and its size when a job names none."""

    max_width: int
    max_height: int
    max_pixels: int | None = None  # None: the sides alone bound it
    default: tuple[int, int] | None = None  # None: (max_width, max_height)


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
    max_pixels: int | None = None
    # family -> its sizes; empty: the base model's family alone, at max_width x max_height
    families: Mapping[str, FamilySizes] = field(default_factory=dict)
    max_loras: int = 3
    default_size: tuple[int, int] | None = None  # a job's size when it names none; None: the largest
    accelerator: str = "mps"  # the machine's GPU kind: "mps" (Apple) or "cuda" (training SDXL/Flux here needs CUDA)

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(self.families) or (self.base_model,)

    def allows(self, family: str) -> bool:
        return family in self.family_names

    def for_family(self, family: str | None) -> Profile:
        """This profile with `family`'s sizes (the caller has checked `allows`); None: as it is."""
        sizes = self.families.get(family) if family is not None else None
        if sizes is None:
            return self
        return replace(self, max_width=sizes.max_width, max_height=sizes.max_height, max_pixels=sizes.max_pixels,
                       default_size=sizes.default)

    @property
    def default_width(self) -> int:
        return self.default_size[0] if self.default_size else self.max_width

    @property
    def default_height(self) -> int:
        return self.default_size[1] if self.default_size else self.max_height

    def size_limit_text(self) -> str:
        area = f", at most {self.max_pixels} pixels" if self.max_pixels else ""
        return f"{self.max_width}x{self.max_height}{area}"

    def fits(self, width: int, height: int) -> bool:
        return (width <= self.max_width and height <= self.max_height
                and (self.max_pixels is None or width * height <= self.max_pixels))

    def check_resolution(self, width: int, height: int) -> None:
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 8:
                raise InvalidField(
                    f"resolution.{name} must be a positive multiple of 8, got {value}.",
                    {"field": f"resolution.{name}", "value": value},
                )
        if not self.fits(width, height):
            area = f", width x height <= {self.max_pixels}" if self.max_pixels else ""
            limit: dict[str, int] = {"maxWidth": self.max_width, "maxHeight": self.max_height}
            if self.max_pixels:
                limit["maxPixels"] = self.max_pixels
            raise ResolutionExceedsProfile(
                f"Resolution {width}x{height} exceeds the {self.name} profile limit of "
                f"{self.max_width}x{self.max_height} (width <= {self.max_width}, height <= {self.max_height}{area}).",
                {"profile": self.name, "limit": limit, "requested": {"width": width, "height": height}},
            )

    def check_resolution_of_any_family(self, width: int, height: int) -> None:
        """An image of whichever family (an upscale of one rendered before): the first family it fits."""
        for family in self.family_names:
            if self.for_family(family).fits(width, height):
                return
        self.check_resolution(width, height)

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
            families={"sd15": FamilySizes(512, 768)},
            description="Apple M1 Pro, 16 GB unified memory: SD1.5 only, 512x768, batch 1",
        ),
        Profile(
            # A 32 GB Mac: SDXL's fp16 UNet (5 GB), both text encoders (1.6 GB) and an fp32 VAE decoding a
            # 1024x1024 image fit beside the desktop; the embedded engine runs it on MPS.
            name="m1max-32gb",
            max_width=768,
            max_height=1024,
            families={
                "sd15": FamilySizes(768, 1024, default=(512, 768)),
                "sdxl": FamilySizes(1536, 1536, max_pixels=1024 * 1024, default=(832, 1216)),
            },
            description="Apple M1/M2/M3 Max or Pro with 32 GB unified memory: SD1.5 up to 768x1024, SDXL at its "
                        "1024-pixel buckets (embedded engine on MPS), batch 1",
        ),
        Profile(
            name="cuda-24gb",
            max_width=1024,
            max_height=1024,
            max_train_resolution=768,
            families={
                "sd15": FamilySizes(1024, 1024),
                # SDXL's buckets: 1024x1024, 832x1216, 1216x832, 768x1344 ... (about a megapixel each)
                "sdxl": FamilySizes(1536, 1536, max_pixels=1024 * 1024, default=(832, 1216)),
                "flux": FamilySizes(1024, 1024),  # fp8 weights: 1024x1024 fits 24 GB
            },
            accelerator="cuda",
            description="A 24 GB CUDA card: SD1.5 up to 1024 px, SDXL at its 1024-pixel buckets, Flux at 1024x1024; "
                        "batch 1",
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


def where_it_trains(family: str) -> list[str]:
    """Where a LoRA of `family` can train, in words a message names: SD 1.5 everywhere; SDXL and Flux on a
    GPU (kohya or ai-toolkit), remote or on a CUDA machine whose profile allows the family."""
    if family == "sd15":
        return ["here (every profile)", "remote vast", "remote ssh"]
    gpus = [p.name for p in PROFILES.values() if family in p.families and p.accelerator == "cuda"]
    return ["remote vast", "remote ssh", f"here on a CUDA machine whose profile allows {family} "
                                        f"({', '.join(gpus)})"]
