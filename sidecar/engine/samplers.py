"""ComfyUI's KSampler `sampler_name` + `scheduler` -> a diffusers scheduler, as a table.

A workflow means the same thing on both backends only where diffusers has the same algorithm and
the same sigma schedule; every other pair is refused at submit time with `sampler_not_supported`
listing the supported pairs. Schedules: ComfyUI `normal` spaces timesteps evenly from the last to
the first (diffusers "linspace"), `simple`/`sgm_uniform` step back from the end ("trailing"),
`ddim_uniform` steps forward from the start ("leading"), `karras`/`exponential` are sigma spacings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import SamplerNotSupported

SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
}
SPACING_ONLY = ("normal", "simple", "sgm_uniform", "ddim_uniform")
ALL_SCHEDULES = tuple(SCHEDULES)


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a diffusers class name, or "lms" (ours)
    kwargs: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ALL_SCHEDULES


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerSpec("EulerAncestralDiscreteScheduler", schedules=SPACING_ONLY),
    "heun": SamplerSpec("HeunDiscreteScheduler"),
    "dpm_2": SamplerSpec("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "lms": SamplerSpec("lms"),
    "dpmpp_2m": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": SamplerSpec("DPMSolverMultistepScheduler",
                                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "ddim": SamplerSpec("DDIMScheduler", schedules=SPACING_ONLY),
    "uni_pc": SamplerSpec("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "uni_pc_bh2": SamplerSpec("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}


def supported() -> dict[str, list[str]]:
    """sampler_name -> the schedulers it runs with (what the error and /health list)."""
    return {name: list(spec.schedules) for name, spec in SAMPLERS.items()}


def check(sampler: Any, schedule: Any) -> SamplerSpec:
    spec = SAMPLERS.get(sampler) if isinstance(sampler, str) else None
    if spec is None or schedule not in spec.schedules:
        pairs = ", ".join(f"{n} ({'/'.join(s.schedules) if s.schedules != ALL_SCHEDULES else 'any scheduler'})"
                          for n, s in SAMPLERS.items())
        what = f"sampler {sampler!r}" if spec is None else f"sampler {sampler!r} with scheduler {schedule!r}"
        raise SamplerNotSupported(
            f"The embedded engine does not support {what}. Supported: {pairs}; schedulers: "
            f"{', '.join(ALL_SCHEDULES)}.",
            {"sampler": sampler, "scheduler": schedule, "supported": supported()},
        )
    return spec


def make_scheduler(sampler: str, schedule: str, base_config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler (schedulers keep per-run state, so never share one between jobs)."""
    import diffusers

    spec = check(sampler, schedule)
    config = {**base_config, **spec.kwargs, **SCHEDULES[schedule]}
    if spec.scheduler_class == "lms":
        from sidecar.engine.lms import LMSScheduler

        cls = LMSScheduler
    else:
        cls = getattr(diffusers, spec.scheduler_class)
    # Schedulers ignore (with a warning) config keys they do not take; pass only theirs.
    accepted = set(cls._get_init_keys(cls)) if hasattr(cls, "_get_init_keys") else set(config)
    return cls.from_config({k: v for k, v in config.items() if k in accepted})
