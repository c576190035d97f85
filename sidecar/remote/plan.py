"""Choosing an offer and saying what a run will take: steps, time here and there, cost, and why that offer.

Time there is a rough figure: seconds per step scale with the inverse of the GPU's TFLOPS from one
reference point (below); the run's own measured rate replaces it once ~20 steps ran. The chooser takes,
among the offers under every limit, the one with the lowest expected total cost (price times expected
hours plus the set-up allowance), so a faster card at a higher price can win.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.errors import NoOfferUnderLimits
from sidecar.remote.provider import Limits, Offer

# kohya train_network.py, SD1.5 LoRA dim 32, 512 px, batch 1, fp16 + --sdpa on a ~35 TFLOPS card (RTX 3090
# class): about 0.4 s/step. A rough anchor for planning only, never a limit.
REFERENCE_SECONDS_PER_STEP = 0.4
REFERENCE_TFLOPS = 35.0
# Renting, pulling the image, installing sd-scripts and uploading the set and the base model: billed too.
SETUP_HOURS = 0.25


@dataclass(frozen=True)
class Plan:
    offer: Offer
    seconds_per_step: float
    hours: float
    cost: float
    why: str
    considered: int


def seconds_per_step(offer: Offer) -> float:
    tflops = offer.total_tflops or REFERENCE_TFLOPS
    return REFERENCE_SECONDS_PER_STEP * REFERENCE_TFLOPS / max(tflops, 1.0)


def expected(offer: Offer, steps: int) -> tuple[float, float, float]:
    """(s/step, hours incl. set-up, $) for a run of `steps` on `offer`."""
    rate = seconds_per_step(offer)
    hours = steps * rate / 3600 + SETUP_HOURS
    return rate, hours, round(hours * offer.price_per_hour, 4)


def _misses(offer: Offer, limits: Limits, hours: float, cost: float) -> str | None:
    if offer.price_per_hour > limits.max_price_per_hour:
        return "price"
    if offer.gpu_memory_gb and offer.gpu_memory_gb < limits.min_gpu_memory_gb:
        return "gpu memory"
    if offer.cuda_version is not None and offer.cuda_version < limits.min_cuda_version:
        return "cuda"
    if offer.reliability is not None and offer.reliability < limits.min_reliability:
        return "reliability"
    if cost > limits.max_total_cost:
        return "total cost"
    if hours > limits.max_hours:
        return "hours"
    return None


def choose(offers: list[Offer], limits: Limits, steps: int) -> Plan:
    """The offer with the lowest expected cost under every limit, or `NoOfferUnderLimits` saying which
    limit ruled the offers out."""
    fitting: list[tuple[float, float, Offer, float, float]] = []
    missed: dict[str, int] = {}
    for offer in offers:
        rate, hours, cost = expected(offer, steps)
        miss = _misses(offer, limits, hours, cost)
        if miss:
            missed[miss] = missed.get(miss, 0) + 1
        else:
            fitting.append((cost, -(offer.reliability or 0), offer, rate, hours))
    if not fitting:
        cheapest = min(offers, key=lambda o: o.price_per_hour, default=None)
        reasons = ", ".join(f"{n} over/under {what}" for what, n in sorted(missed.items())) or "no offers at all"
        raise NoOfferUnderLimits(
            f"No offer fits the limits (at most ${limits.max_price_per_hour:g}/h, ${limits.max_total_cost:g} in "
            f"all, {limits.max_hours:g} h, at least {limits.min_gpu_memory_gb:g} GB GPU memory, CUDA "
            f"{limits.min_cuda_version:g}, reliability {limits.min_reliability:g}) among {len(offers)} offer(s): "
            f"{reasons}. Raise a limit (maxPricePerHour, maxTotalCost, ...) or try again later.",
            {"offers": len(offers), "ruledOut": missed, "limits": limits.__dict__,
             "cheapest": cheapest.describe() if cheapest else None})
    fitting.sort(key=lambda t: (t[0], t[1]))
    cost, _, offer, rate, hours = fitting[0]
    why = (f"lowest expected cost (${cost:.2f} for {steps} steps, about {hours * 60:.0f} min with set-up) of "
           f"{len(fitting)} offer(s) under ${limits.max_price_per_hour:g}/h with at least "
           f"{limits.min_gpu_memory_gb:g} GB, CUDA {limits.min_cuda_version:g}+, reliability "
           f"{limits.min_reliability:g}+")
    return Plan(offer=offer, seconds_per_step=rate, hours=hours, cost=cost, why=why, considered=len(offers))
