"""ComfyUI's `lms` sampler (linear multistep, order 4) as a diffusers scheduler.

diffusers' LMSDiscreteScheduler needs scipy only to integrate a polynomial numerically; the
integrand is a polynomial, so numpy integrates it exactly and we avoid the dependency. Sigmas,
timesteps, karras/exponential schedules and input scaling are Euler's (same sigma space as LMS).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

LMS_ORDER = 4


def lms_coefficient(sigmas: np.ndarray, order: int, t: int, j: int) -> float:
    """Integral over [sigma_t, sigma_t+1] of the Lagrange basis polynomial for derivative t-j."""
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly *= np.polynomial.Polynomial([-sigmas[t - k], 1.0]) / (sigmas[t - j] - sigmas[t - k])
    integral = poly.integ()
    return float(integral(sigmas[t + 1]) - integral(sigmas[t]))


class LMSScheduler(EulerDiscreteScheduler):
    order = 1

    def set_timesteps(self, *args, **kwargs) -> None:
        super().set_timesteps(*args, **kwargs)
        self.derivatives: list[torch.Tensor] = []
        self._sigmas_np = self.sigmas.detach().cpu().double().numpy()

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True, **_: object):
        if self.step_index is None:
            self._init_step_index(timestep)
        t = self.step_index
        sigma = self.sigmas[t].to(sample.device)
        kind = self.config.prediction_type
        if kind == "epsilon":
            denoised = sample - sigma * model_output
        elif kind == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            raise ValueError(f"prediction_type {kind!r} is not supported by the lms sampler")
        self.derivatives.append((sample - denoised) / sigma)
        if len(self.derivatives) > LMS_ORDER:
            self.derivatives.pop(0)
        order = min(t + 1, LMS_ORDER)
        coeffs = [lms_coefficient(self._sigmas_np, order, t, j) for j in range(order)]
        prev = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives), strict=False))
        self._step_index += 1
        if not return_dict:
            return (prev, denoised)
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)
