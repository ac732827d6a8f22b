"""Densities over embeddings of normal images; ``score`` is higher for more anomalous samples.

- ``gde``: mean + Ledoit-Wolf shrunk covariance in torch (float64), Mahalanobis distance.
- ``gde_sklearn``: the same with scikit-learn's ``LedoitWolf`` (a cross-check of ``gde``).
- ``kde``: scikit-learn ``KernelDensity`` (Gaussian kernel), score = -log density.

Each density saves its state as a dict of tensors and is rebuilt from it by :func:`density_from_state`.
"""

from __future__ import annotations

import numpy as np
import torch

from adbench.data.errors import ConfigError

DENSITIES = ("gde", "gde_sklearn", "kde")


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean [D], shrunk covariance [D, D], shrinkage) of samples ``x`` [N, D], as Ledoit & Wolf (2004).

    The target is ``mu * I`` with ``mu`` the mean variance; the shrinkage is the estimated optimum, capped at 1.
    """
    x = x.double()
    n, d = x.shape
    mean = x.mean(dim=0)
    xc = x - mean  # [N, D]
    emp = xc.T @ xc / n  # [D, D] biased empirical covariance
    mu = torch.trace(emp) / d
    # delta: squared distance of emp to the target; beta: estimated variance of emp's entries (both / d)
    delta = ((emp - mu * torch.eye(d, dtype=x.dtype, device=x.device)) ** 2).sum() / d
    fourth = ((xc**2).sum(dim=1) ** 2).sum()  # sum over i, j, k of xc_ij^2 xc_ik^2
    beta = (fourth / n - (emp**2).sum()) / (d * n)
    beta = torch.minimum(beta, delta)
    shrink = 0.0 if float(delta) == 0.0 else float(beta / delta)
    cov = (1 - shrink) * emp + shrink * mu * torch.eye(d, dtype=x.dtype, device=x.device)
    return mean, cov, shrink


class GaussianDensity:
    """``gde``: Mahalanobis distance to the Ledoit-Wolf Gaussian of the training embeddings (torch)."""

    name = "gde"

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.shrinkage: float = float("nan")

    def fit(self, x: torch.Tensor) -> "GaussianDensity":
        """Fit to ``x`` [N, D]."""
        self.mean, cov, self.shrinkage = ledoit_wolf(x)
        self.precision = torch.linalg.pinv(cov, hermitian=True)  # [D, D]
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row of ``x`` [M, D] -> [M] (float32)."""
        assert self.mean is not None and self.precision is not None, "fit first"
        out = []
        for chunk in x.split(65536):
            xc = chunk.double().to(self.mean.device) - self.mean  # [m, D]
            out.append(((xc @ self.precision) * xc).sum(dim=1).clamp_(min=0).sqrt_())
        return torch.cat(out).float().cpu()

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.cpu(), "precision": self.precision.cpu(), "shrinkage": torch.tensor(self.shrinkage)}

    def load_state(self, state: dict[str, torch.Tensor]) -> "GaussianDensity":
        self.mean, self.precision = state["mean"].double(), state["precision"].double()
        self.shrinkage = float(state["shrinkage"])
        return self


class SklearnGaussianDensity:
    """``gde_sklearn``: Mahalanobis distance under scikit-learn's ``LedoitWolf`` fit."""

    name = "gde_sklearn"

    def __init__(self) -> None:
        self.train: torch.Tensor | None = None
        self.model = None

    def fit(self, x: torch.Tensor) -> "SklearnGaussianDensity":
        from sklearn.covariance import LedoitWolf

        self.train = x.detach().float().cpu()
        self.model = LedoitWolf().fit(self.train.double().numpy())
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "fit first"
        d2 = self.model.mahalanobis(x.detach().double().cpu().numpy())  # squared distances
        return torch.from_numpy(np.sqrt(np.maximum(d2, 0))).float()

    def state(self) -> dict[str, torch.Tensor]:
        return {"train": self.train}

    def load_state(self, state: dict[str, torch.Tensor]) -> "SklearnGaussianDensity":
        return self.fit(state["train"])


class KernelDensity:
    """``kde``: negative log-density under a Gaussian-kernel KDE of the training embeddings (scikit-learn)."""

    name = "kde"

    def __init__(self, bandwidth: float = 1.0) -> None:
        if not bandwidth > 0:
            raise ConfigError(f"method.kde_bandwidth={bandwidth} must be > 0")
        self.bandwidth = float(bandwidth)
        self.train: torch.Tensor | None = None
        self.model = None

    def fit(self, x: torch.Tensor) -> "KernelDensity":
        from sklearn.neighbors import KernelDensity as SkKDE

        self.train = x.detach().float().cpu()
        self.model = SkKDE(kernel="gaussian", bandwidth=self.bandwidth).fit(self.train.double().numpy())
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "fit first"
        return torch.from_numpy(-self.model.score_samples(x.detach().double().cpu().numpy())).float()

    def state(self) -> dict[str, torch.Tensor]:
        return {"train": self.train, "bandwidth": torch.tensor(self.bandwidth)}

    def load_state(self, state: dict[str, torch.Tensor]) -> "KernelDensity":
        self.bandwidth = float(state["bandwidth"])
        return self.fit(state["train"])


def make_density(name: str, bandwidth: float = 1.0) -> GaussianDensity | SklearnGaussianDensity | KernelDensity:
    """A fresh density by config name (``method.density``)."""
    if name == "gde":
        return GaussianDensity()
    if name == "gde_sklearn":
        return SklearnGaussianDensity()
    if name == "kde":
        return KernelDensity(bandwidth)
    raise ConfigError(f"method.density={name!r}; choose one of {', '.join(DENSITIES)}")


def density_from_state(name: str, state: dict[str, torch.Tensor]):
    """Rebuild a fitted density saved with ``.state()``."""
    bandwidth = float(state["bandwidth"]) if "bandwidth" in state else 1.0
    return make_density(name, bandwidth).load_state(state)
