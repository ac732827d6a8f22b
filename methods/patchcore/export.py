"""PatchCore as one ONNX-exportable module: features, exact nearest-neighbour scores, upsampled blurred map.

The locally aware aggregation (3x3 neighbourhood flattened channel-major, adaptive average pooling over
channels) is linear, so each layer's unfold + pooling is one fixed 3x3 convolution and the final pooling a
fixed 1x1 convolution. The nearest rows of the memory bank are ranked by ``|b|^2 - 2 q.b`` (the squared
distance less the query's constant ``|q|^2``), one matrix product with the bank stacked as ``[-2 B^T; |b|^2]``, so
the [B, P, M] table is written once and read once by the top-k; the k nearest rows are then re-gathered and their
distances computed as differences (no cancellation). The Gaussian blur is
:class:`adbench.export.GaussianBlur` (scipy's ``gaussian_filter``).
Approximate faiss indexes (hnsw, ivf) are exported as the exact search.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adbench.export import GaussianBlur, NotExportable, register_exporter


def pooling_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``P`` [n_in, n_out] with ``x @ P == adaptive_avg_pool1d(x, n_out)`` for rows ``x`` of length ``n_in``."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in)
    return F.adaptive_avg_pool1d(eye, n_out).reshape(n_in, n_out).float()


class PatchCoreGraph(nn.Module):
    """Normalised images [B, 3, H, W] -> (image scores [B], anomaly maps [B, H, W]) of a fitted PatchCore."""

    def __init__(self, extractor: nn.Module, in_channels: list[int], layer_dim: int, embed_dim: int, patch_size: int,
                 bank: torch.Tensor, num_nn: int, squared: bool, sigma: float, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.extractor = extractor
        k = patch_size
        self.layer_convs = nn.ModuleList()
        for c in in_channels:  # unfold (channel-major c*k*k + i*k + j) then pooling == one k x k convolution
            conv = nn.Conv2d(c, layer_dim, k, padding=(k - 1) // 2, bias=False)
            conv.weight.data = pooling_matrix(c * k * k, layer_dim).t().reshape(layer_dim, c, k, k).contiguous()
            self.layer_convs.append(conv)
        final = nn.Conv2d(layer_dim * len(in_channels), embed_dim, 1, bias=False)  # layer-major concatenation
        final.weight.data = pooling_matrix(layer_dim * len(in_channels), embed_dim).t()[..., None, None].contiguous()
        self.final = final
        self.register_buffer("bank", bank.float().contiguous())  # [M, D]
        rank = torch.cat([-2 * bank.double().t(), (bank.double() ** 2).sum(1)[None]])  # [D + 1, M]
        self.register_buffer("rank_matrix", rank.float().contiguous())
        self.num_nn = min(num_nn, len(bank))
        self.squared = squared
        self.out_size = tuple(out_size)
        self.blur = GaussianBlur(sigma, self.out_size) if sigma > 0 else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.extractor(x)
        grid = feats[0].shape[-2:]
        per_layer = []
        for f, conv in zip(feats, self.layer_convs):
            p = conv(f.float())  # [B, layer_dim, h_l, w_l]
            if p.shape[-2:] != grid:
                p = F.interpolate(p, size=(int(grid[0]), int(grid[1])), mode="bilinear", align_corners=False)
            per_layer.append(p)
        emb = self.final(torch.cat(per_layer, 1))  # [B, D, h, w]
        b, d, h, w = emb.shape
        q = emb.reshape(b, d, h * w).transpose(1, 2)  # [B, P, D]
        q1 = torch.cat([q, torch.ones_like(q[..., :1])], -1)  # [B, P, D + 1]
        _, ids = torch.topk(q1 @ self.rank_matrix, self.num_nn, dim=-1, largest=False)  # [B, P, k]
        nearest = self.bank[ids.reshape(-1)].reshape(b, h * w, self.num_nn, d)  # [B, P, k, D]
        dist = ((q.unsqueeze(2) - nearest) ** 2).sum(-1)  # [B, P, k], squared L2
        if not self.squared:
            dist = dist.sqrt()
        patch = dist.mean(-1)  # [B, P]
        score = patch.max(1).values  # [B]
        up = F.interpolate(patch.reshape(b, 1, h, w), size=self.out_size, mode="bilinear", align_corners=False)
        if self.blur is not None:
            up = self.blur(up)
        return score, up[:, 0]


@register_exporter("patchcore")
def export_module(method) -> nn.Module:
    """The :class:`PatchCoreGraph` of a loaded :class:`~methods.patchcore.PatchCore` (exact search always)."""
    cfg = method.cfg
    if cfg.get("reweight", False):
        raise NotExportable("patchcore with method.reweight=true is not exportable because the eq. 7 reweighting "
                            "searches the bank again per image (data-dependent second search); export with reweight=false")
    feats = method.model.extractor.cpu()
    h, w = method.ctx.image_size
    with torch.no_grad():
        channels = [int(f.shape[1]) for f in feats(torch.zeros(1, 3, int(h), int(w)))]
    graph = PatchCoreGraph(feats, channels, int(cfg.layer_dim), int(cfg.embed_dim), int(cfg.patch_size),
                           method.bank.cpu().clone(), int(cfg.num_nn),
                           str(cfg.get("score_distance", "squared")) == "squared", float(cfg.blur_sigma),
                           (int(h), int(w)))
    graph.export_note = ("exact nearest-neighbour search" if method.knn.index == "flat" else
                         f"exact nearest-neighbour search (the checkpoint's approximate {method.knn.index} index "
                         f"is not in the graph)")
    return graph
