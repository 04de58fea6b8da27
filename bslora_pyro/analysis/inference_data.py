"""The gate posterior of a fitted :class:`BayesianLora` as ArviZ ``InferenceData``.

Groups:

- ``posterior``: guide draws in a ``gate_draws`` plate: hard gates ``gate``, relaxed
  (Concrete) gates ``gate_relaxed``, the prior's auxiliary latents (``pi``, ``v``; a latent
  shared by several modules, such as one per layer, is a variable of its own named after
  its site), and per draw the active ranks (``sum_j z_j``) and the KL(q || p) of each module
  and of each shared latent (``kl_<site>``); ``kl_total`` is the ELBO's KL term.
- ``prior``: draws of the same sites from the prior.
- ``constant_data``: q(z=1) (``inclusion_prob``) and the prior's P(z=1).
- ``training``: the training traces per ``step`` (negative ELBO, NLL, KL, expected active
  ranks, tau) and the logged q(z=1) per ``log_step``.

Modules inside transformer blocks share variables with dims ``(module_type, layer, rank)``
(NaN where a block lacks that module); a module outside the blocks (``lm_head``) gets
variables of its own, suffixed with its path: ``gate_lm_head``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from bslora_pyro.models.base import unwrap

with warnings.catch_warnings():  # arviz 0.x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

POSTERIOR_FILE = "posterior.nc"
GRID_DIMS = ("module_type", "layer")
TRAINING_GROUP = "training"


@dataclass(frozen=True)
class ModuleGrid:
    """Where each adapted module sits: a (module type, layer) cell, or on its own."""

    kinds: tuple[str, ...]
    layers: tuple[int, ...]
    width: int
    cells: dict[str, tuple[int, int]]
    loose: dict[str, str]


def split_path(path: str) -> tuple[str, int, str] | None:
    """``model.layers.27.self_attn.q_proj`` -> ``("model.layers", 27, "self_attn.q_proj")``;
    ``None`` for a module outside the numbered blocks."""
    parts = path.split(".")
    for i in range(1, len(parts) - 1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1 :])
    return None


def module_grid(module_ranks: dict[str, int]) -> ModuleGrid:
    """Lay the adapted modules out on a (module type, layer) grid."""
    split = {path: split_path(path) for path in module_ranks}
    stacks = {s[0] for s in split.values() if s}

    def kind(s: tuple[str, int, str]) -> str:
        return s[2] if len(stacks) <= 1 else f"{s[0]}.{s[2]}"

    kinds = tuple(dict.fromkeys(kind(s) for s in split.values() if s))
    layers = tuple(sorted({s[1] for s in split.values() if s}))
    cells = {p: (kinds.index(kind(s)), layers.index(s[1])) for p, s in split.items() if s}
    loose = {p: re.sub(r"\W", "_", p) for p, s in split.items() if s is None}
    return ModuleGrid(kinds, layers, max(module_ranks.values()), cells, loose)


def _pad(value: np.ndarray, width: int) -> np.ndarray:
    missing = width - value.shape[-1]
    if missing <= 0:
        return value
    pad = np.full(value.shape[:-1] + (missing,), np.nan, dtype=value.dtype)
    return np.concatenate([value, pad], axis=-1)


def add_gridded(
    store: dict,
    dims: dict,
    name: str,
    grid: ModuleGrid,
    values: dict[str, np.ndarray],
    tail: str | None,
    lead: tuple[str, ...] = (),
) -> None:
    """Add per-module arrays ``[*lead, (width)]`` as ``name`` (grid modules, NaN-padded)
    and ``name_<path>`` (modules outside the blocks); ``tail`` names the last dim."""
    values = {p: np.asarray(v, dtype=np.float32) for p, v in values.items()}
    inside = {p: v for p, v in values.items() if p in grid.cells}
    width = max((v.shape[-1] for v in values.values()), default=0) if tail else 0
    tail_dims = [tail] if tail else []
    if inside:
        shape = next(iter(inside.values())).shape[: -1 if tail else None]
        cells = (len(grid.kinds), len(grid.layers)) + ((width,) if tail else ())
        out = np.full(shape + cells, np.nan, dtype=np.float32)
        for path, value in inside.items():
            k, layer = grid.cells[path]
            if tail:
                out[..., k, layer, :] = _pad(value, width)
            else:
                out[..., k, layer] = value
        store[name] = out
        dims[name] = [*lead, *GRID_DIMS, *tail_dims]
    for path, suffix in grid.loose.items():
        if path in values:
            store[f"{name}_{suffix}"] = _pad(values[path], width) if tail else values[path]
            dims[f"{name}_{suffix}"] = [*lead, *tail_dims]


def _sites(trace: poutine.Trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


@torch.no_grad()
def trace_draws(fn, num_draws: int, replay: poutine.Trace | None = None, **kwargs):
    """Trace ``fn`` (a prior's ``model`` or a guide) with ``num_draws`` draws of every site.

    The ``gate_draws`` plate is entered inside the traced function and wraps the latents
    as well as the gates (``fn`` gets an empty gate plate), so each draw has its own
    latents; replayed sites are broadcast over the draws too.
    """

    def in_plate():
        with pyro.plate("gate_draws", num_draws, dim=-1):
            return fn(contextlib.nullcontext(), **kwargs)

    traced = in_plate if replay is None else poutine.replay(in_plate, trace=replay)
    return poutine.trace(traced).get_trace()


@torch.no_grad()
def kl_draws(prior, guide_trace: poutine.Trace, num_draws: int) -> dict[str, np.ndarray]:
    """KL(q || p) per site and draw, [M]: a gate site's exact expected KL (what the ELBO
    uses), a latent's closed form where one is registered, else ``log q - log p`` at the
    draw. Keys are the sites' names (module paths for gates)."""
    model_sites = _sites(trace_draws(prior.model, num_draws, replay=guide_trace))
    guide_sites = _sites(guide_trace)
    out = {}
    for name, site in model_sites.items():
        q = guide_sites[name]
        expected = q["infer"].get("expected_kl")
        if expected is not None:
            kl = expected(unwrap(q["fn"]), guide_trace)
        else:
            try:
                kl = kl_divergence(q["fn"], site["fn"])
            except NotImplementedError:
                kl = q["fn"].log_prob(q["value"]) - site["fn"].log_prob(q["value"])
        out[name] = torch.broadcast_to(kl, (num_draws,)).float().cpu().numpy()
    return out


def _by_module(prior, per_site: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Site values summed per module (its gates and the latents of it alone), and the
    latents shared by several modules on their own (group-level sites)."""
    owners = {site.name: site.modules for site in prior.latent_sites()}
    modules = {m: np.zeros_like(next(iter(per_site.values()))) for m in prior.module_ranks}
    groups = {}
    for name, value in per_site.items():
        shared = owners.get(name, (name,))
        if len(shared) == 1 and shared[0] in modules:
            modules[shared[0]] = modules[shared[0]] + value
        else:
            groups[name] = value
    return modules, groups


def _values(trace: poutine.Trace, prior) -> tuple[dict, dict[str, dict], dict]:
    """Gate draws by module; latents of one module by suffix then module; group-level
    latents (shared by several modules) by site name."""
    owners = {site.name: site for site in prior.latent_sites()}
    gates, aux, groups = {}, {}, {}
    for name, site in _sites(trace).items():
        value = site["value"].detach().float().cpu().numpy()
        latent = owners.get(name)
        if latent is None:
            gates[name] = value
        elif len(latent.modules) == 1 and latent.group in prior.module_ranks:
            aux.setdefault(latent.suffix, {})[latent.group] = value
        else:
            groups[name] = value
    return gates, aux, groups


def _variable(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _latent_vars(store: dict, dims: dict, trace, grid: ModuleGrid, prior) -> dict:
    ranks = prior.module_ranks
    gates, aux, groups = _values(trace, prior)
    add_gridded(store, dims, "gate", grid, gates, "rank")
    for suffix, values in aux.items():
        same = all(v.shape[-1] == ranks[m] for m, v in values.items())
        add_gridded(store, dims, _variable(suffix), grid, values,
                    "rank" if same else f"{suffix}_index")
    for name, value in groups.items():  # e.g. one inclusion probability per layer
        variable = _variable(name)
        store[variable] = value
        dims[variable] = [f"{variable}_index"]
    active = {m: g.sum(-1) for m, g in gates.items()}
    add_gridded(store, dims, "active_ranks", grid, active, None)
    store["active_ranks_total"] = sum(active.values())
    return gates


def _sample_groups(method, num_draws: int, grid: ModuleGrid) -> tuple[dict, dict, dict]:
    prior, guide = method.prior, method.gate_guide
    posterior, prior_group, dims = {}, {}, {}
    hard = trace_draws(guide, num_draws, hard=True)
    _latent_vars(posterior, dims, hard, grid, prior)
    relaxed = trace_draws(guide, num_draws, hard=False, temperature=guide.final_temperature)
    add_gridded(posterior, dims, "gate_relaxed", grid, _values(relaxed, prior)[0], "rank")
    per_module, per_group = _by_module(prior, kl_draws(prior, hard, num_draws))
    add_gridded(posterior, dims, "kl", grid, per_module, None)
    for name, value in per_group.items():
        posterior[f"kl_{_variable(name)}"] = value
    posterior["kl_total"] = sum(per_module.values()) + sum(per_group.values(), 0.0)
    _latent_vars(prior_group, dims, trace_draws(prior.model, num_draws), grid, prior)
    return posterior, prior_group, dims


def _last_per_step(records: list[dict]) -> list[dict]:
    return list({r["step"]: r for r in records}.values())


def training_dataset(
    train_log: list[dict], gate_history: list[dict], grid: ModuleGrid, ranks: dict[str, int]
) -> xr.Dataset | None:
    """Training traces per ``step`` and the logged q(z=1) per ``log_step``."""
    data_vars, coords = {}, {}
    train_log, gate_history = _last_per_step(train_log), _last_per_step(gate_history)
    if train_log:
        coords["step"] = [r["step"] for r in train_log]
        keys = [k for k, v in train_log[0].items() if k != "step" and isinstance(v, int | float)]
        for key in keys:
            data_vars[key] = ("step", np.array([r.get(key, math.nan) for r in train_log], float))
        if "loss" in data_vars:
            data_vars["elbo"] = ("step", -data_vars["loss"][1])
    if gate_history:
        coords["log_step"] = [r["step"] for r in gate_history]
        probs = {m: np.array([r["probs"].get(m, [math.nan] * n) for r in gate_history])
                 for m, n in ranks.items()}
        store, dims = {}, {}
        add_gridded(store, dims, "inclusion_prob_history", grid, probs, "rank", ("log_step",))
        data_vars.update({k: (dims[k], v) for k, v in store.items()})
        coords.update(_grid_coords(grid))
    if not data_vars:
        return None
    attrs = {"loss": "negative ELBO per step", "active_ranks": "expected active ranks (sum q)"}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _grid_coords(grid: ModuleGrid) -> dict:
    return {"module_type": list(grid.kinds), "layer": list(grid.layers),
            "rank": list(range(grid.width))}


def _from_dict(groups: dict[str, dict], coords: dict, dims: dict):
    """``az.from_dict`` on arviz 0.x (groups as keywords) and 1.x (one mapping)."""
    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def attach_group(idata, name: str, dataset: xr.Dataset):
    """Add a custom group (arviz 0.x ``InferenceData`` or 1.x ``DataTree``)."""
    if hasattr(idata, "add_groups"):
        idata.add_groups({name: dataset}, warn_on_custom_groups=False)
    else:
        idata[name] = dataset
    return idata


def build_inference_data(
    method,
    num_draws: int = 2000,
    seed: int = 0,
    train_log: list[dict] | None = None,
    gate_history: list[dict] | None = None,
    attrs: dict | None = None,
):
    """ArviZ data of ``method``'s gate posterior (its guide over ``method.prior``'s sites;
    an amortized guide at the mean training input) and training traces."""
    prior = method.prior
    grid = module_grid(prior.module_ranks)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        posterior, prior_group, dims = _sample_groups(method, num_draws, grid)
    constant, const_dims = {}, {}
    as_np = {m: p.float().cpu().numpy() for m, p in method.inclusion_probs().items()}
    add_gridded(constant, const_dims, "inclusion_prob", grid, as_np, "rank")
    as_np = {m: p.float().cpu().numpy() for m, p in prior.prior_inclusion_probs().items()}
    add_gridded(constant, const_dims, "prior_inclusion_prob", grid, as_np, "rank")
    info = {
        "prior": prior.name,
        "prior_hyperparameters": json.dumps(prior.hyperparameters()),
        "guide": json.dumps({"name": method.gate_guide.name, **method.gate_guide.options()}),
        "modules": json.dumps(prior.module_ranks),
        "num_draws": num_draws,
        "seed": seed,
        **(attrs or {}),
    }
    groups = {
        "posterior": {k: v[None] for k, v in posterior.items()},
        "prior": {k: v[None] for k, v in prior_group.items()},
        "constant_data": constant,
    }
    idata = _from_dict(groups, _grid_coords(grid), {**dims, **const_dims})
    idata.posterior.attrs.update(info)
    training = training_dataset(train_log or [], gate_history or [], grid, prior.module_ranks)
    if training is not None:
        attach_group(idata, TRAINING_GROUP, training)
    return idata


def save_inference_data(idata, path: str | Path) -> Path:
    """Write netCDF through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    idata.to_netcdf(str(tmp))
    os.replace(tmp, path)
    return path


def load_inference_data(path: str | Path):
    return az.from_netcdf(str(path))
