"""The usual sizes of each model family, as the studio offers them: a family's training buckets, cut to
what a profile allows (`Profile.fits`). A job may still name any size within the profile (multiples of 8);
these are the ones a model of the family draws best.

SD 1.5 was trained at 512x512 and fine-tunes use 512-768 px sides; SDXL's buckets are the ones of its
paper (Podell et al. 2023, appendix: about a megapixel each, sides multiples of 64) that kohya's and the
anime fine-tunes train on; Flux takes any size to about 2 megapixels, its examples use these.
"""

from __future__ import annotations

from sidecar.profiles import Profile


BUCKETS: dict[str, tuple[tuple[int, int], ...]] = {
    "sd15": ((512, 512), (512, 768), (768, 512), (512, 640), (640, 512), (768, 768), (768, 1024), (1024, 768),
             (1024, 1024)),
    "sdxl": ((1024, 1024), (896, 1152), (832, 1216), (768, 1344), (640, 1536), (1152, 896), (1216, 832),
             (1344, 768), (1536, 640)),
    "flux": ((1024, 1024), (896, 1152), (832, 1216), (1152, 896), (1216, 832), (768, 1024), (1024, 768),
             (512, 512)),
}


def sizes_that_fit(profile: Profile, family: str) -> list[tuple[int, int]]:
    """`family`'s buckets within `profile` (already `for_family(family)`), the profile's default first."""
    fitting = [s for s in BUCKETS.get(family, ()) if profile.fits(*s)]
    default = (profile.default_width, profile.default_height)
    return [default, *[s for s in fitting if s != default]]


FAMILY_COLUMNS = (("sd15", "SD 1.5"), ("sdxl", "SDXL"), ("flux", "Flux"))


def _sizes_text(profile: Profile, family: str) -> str:
    if not profile.allows(family):
        return "no"
    sized = profile.for_family(family)
    if sized.max_pixels:
        side = int(sized.max_pixels ** 0.5)
        area = f"{side}x{side}" if side * side == sized.max_pixels else f"{sized.max_pixels} px"
        return f"buckets of at most {area} pixels (sides up to {sized.max_width}), {sized.default_width}x" \
               f"{sized.default_height} by default"
    return f"up to {sized.max_width}x{sized.max_height}"


def profile_table(profiles: dict[str, Profile], default: str) -> str:
    """The README's family table (profile x family sizes x LoRAs a job), from the profiles' data; a test
    keeps the README's copy equal to it."""
    head = "| profile | " + " | ".join(label for _, label in FAMILY_COLUMNS) + " | LoRAs a job |"
    rows = [head, "|" + "---|" * (len(FAMILY_COLUMNS) + 2)]
    for name, p in profiles.items():
        label = f"`{name}`" + (" (the default)" if name == default else "")
        rows.append(f"| {label} | " + " | ".join(_sizes_text(p, f) for f, _ in FAMILY_COLUMNS) + f" | {p.max_loras} |")
    return "\n".join(rows) + "\n"
