"""Random rank masking: ranks switched off at random, the learned posterior's control.

Two kinds of masks, per adapted module and per draw (``gates`` of shape ``[G, r]``, as the
Bayesian method uses):

- exactly K of r ranks off at uniformly random places (``num_masked``; the paper's
  ablation; the default, K = r // 2);
- every rank kept independently with a keep probability (``keep_probability``, one for all
  modules, or ``keep_probabilities`` per module): dropout on ranks. ``match_run`` takes
  them from a trained Bayesian sparse LoRA run (its ``gate_posterior.json``): the mean of
  its inclusion probabilities q(z_j = 1) per module (``match: module``) or over every rank
  (``match: global``). That is random dropout at exactly the learned posterior's sparsity,
  the matched control that asks whether *which* ranks the posterior keeps matters.

Training draws fresh masks each step; prediction averages M random masks. The
deterministic prediction uses each rank's keep probability as its gate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from bslora_pyro.adapter import AdapterConfig
from bslora_pyro.methods import MethodError
from bslora_pyro.methods.base import MethodOptions, PlainLora, load_method, take_options
from bslora_pyro.typed import NonNegativeInt, Range

KeepProbability = Annotated[float, Range(gt=0, le=1)]

NAME = "random_mask"
MATCHES = ("module", "global")


@dataclass
class RandomMaskOptions(MethodOptions):
    """``num_masked`` K, 0 <= K < r (default r // 2 unless keep probabilities are given);
    ``keep_probability`` in (0, 1] for every rank; ``keep_probabilities`` per module;
    ``match_run`` a Bayesian sparse LoRA run folder whose posterior sets them
    (``{seed}`` in it is the run's seed) and ``match`` ("module" or "global")."""

    num_masked: NonNegativeInt | None = None
    keep_probability: KeepProbability | None = None
    keep_probabilities: dict[str, float] | None = None
    match_run: str | None = None
    match: str = "module"

    def check(self, adapter: AdapterConfig | None) -> None:
        if self.match not in MATCHES:
            raise MethodError(f"random_mask.match must be one of {MATCHES}, got {self.match!r}")
        given = [k for k in ("keep_probability", "keep_probabilities", "match_run")
                 if getattr(self, k) is not None]
        if len(given) > 1 and given != ["keep_probabilities", "match_run"]:
            raise MethodError(f"random_mask: give one of keep_probability, keep_probabilities "
                              f"and match_run, got {', '.join(given)}")
        for value in (self.keep_probabilities or {}).values():
            if not 0.0 < value <= 1.0:
                raise MethodError(f"random_mask keep probabilities must be in (0, 1], got "
                                  f"{value!r}")
        if given and self.num_masked is not None:
            raise MethodError("random_mask: num_masked and keep probabilities exclude each "
                              "other")
        if given or adapter is None:
            return
        if self.num_masked is None:
            self.num_masked = adapter.r // 2
        if not 0 <= self.num_masked < adapter.r:
            raise MethodError(f"method {NAME!r}: method_options.num_masked must be an integer "
                              f"in [0, {adapter.r}) (adapter.r), got {self.num_masked!r}")


OPTIONS = RandomMaskOptions


def random_masks(groups: int, r: int, masked: int, device=None) -> torch.Tensor:
    """``[groups, r]`` gates in {0, 1} with exactly ``masked`` zeros per row."""
    order = torch.rand(groups, r, device=device).argsort(dim=-1)
    gates = torch.ones(groups, r, device=device)
    return gates.scatter(-1, order[:, :masked], 0.0)


def bernoulli_masks(groups: int, r: int, keep: float, device=None) -> torch.Tensor:
    """``[groups, r]`` gates in {0, 1}, each 1 with probability ``keep``."""
    return (torch.rand(groups, r, device=device) < keep).float()


def matched_keep_probabilities(run_dir: str | Path, match: str) -> dict[str, float]:
    """Keep probabilities per module from a trained run's posterior: the mean of q(z_j = 1)
    over each module's ranks (``module``) or over all ranks (``global``)."""
    from bslora_pyro.experiment.rundir import read_gate_posterior

    posterior = read_gate_posterior(Path(run_dir))["posterior"]
    if match == "global":
        overall = statistics.fmean(q for values in posterior.values() for q in values)
        return dict.fromkeys(posterior, overall)
    return {module: statistics.fmean(values) for module, values in posterior.items()}


class RandomMaskLora(PlainLora):
    stochastic = True

    def __init__(self, *args, num_masked: int | None = None,
                 keep: dict[str, float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_masked = num_masked
        self.keep = keep
        if keep is not None and set(keep) != set(self.adapters):
            missing = sorted(set(self.adapters) - set(keep))[:1] or sorted(set(keep))[:1]
            raise MethodError(f"random_mask keep probabilities do not fit the adapted modules "
                              f"(e.g. {missing[0]!r}): match a run with the same adapter")

    def keep_probability(self, module: str) -> float:
        """The probability that a rank of ``module`` is kept."""
        if self.keep is not None:
            return self.keep[module]
        return 1 - self.num_masked / self.adapters[module].r

    def prepare(self, draws: int, sample: bool) -> None:
        super().prepare(draws, sample)
        for name, layer in self.adapters.items():
            device = layer.lora_A.device
            if not sample:
                layer.gates = torch.full((layer.r,), self.keep_probability(name), device=device)
            elif self.keep is not None:
                layer.gates = bernoulli_masks(draws, layer.r, self.keep[name], device)
            else:
                layer.gates = random_masks(draws, layer.r, self.num_masked, device)

    def model(self, batch, index, num_data, num_draws=1, per_example=False):
        groups = num_draws * len(index) if per_example else num_draws
        self.prepare(groups, sample=True)
        logits = self.scorer.logits(self.backbone, batch, num_draws)
        self.observe(batch, index, num_data, logits)
        return logits


def build(backbone, scorer, adapter, options: dict) -> RandomMaskLora:
    """Options: see :class:`RandomMaskOptions`."""
    opts = take_options(NAME, options, OPTIONS, adapter)
    keep = opts.keep_probabilities
    if keep is None and opts.match_run is not None:  # saved runs keep the resolved values
        keep = matched_keep_probabilities(opts.match_run, opts.match)
    method = RandomMaskLora(backbone, scorer, adapter, name=NAME, num_masked=opts.num_masked,
                            keep=keep)
    if opts.keep_probability is not None:
        method.keep = dict.fromkeys(method.adapters, opts.keep_probability)
    method.options = {"num_masked": opts.num_masked, "keep_probability": opts.keep_probability,
                      "keep_probabilities": keep, "match_run": opts.match_run,
                      "match": opts.match}
    return method


def load(directory: str | Path, backbone, scorer) -> RandomMaskLora:
    return load_method(NAME, build, directory, backbone, scorer)
