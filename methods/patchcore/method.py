"""PatchCore adapter: fit a coreset memory bank of patch features, score test patches by kNN distance."""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import logging
import time
from pathlib import Path

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its import chatter is not for users
import faiss  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from omegaconf import DictConfig
from scipy import ndimage
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.backbones import FeatureExtractor, build_backbone, default_layers
from adbench.cache import FeatureCache, weights_id
from adbench.data.errors import ConfigError
from adbench.registry import register_method
from adbench.utils import load_method_state, save_method_state, progress

from .knn import KnnSpec, build_index, index_kind, set_search_params
from .coreset import ALGORITHMS, greedy_coreset, project, projection_matrix, select_coreset
from .model import PatchFeatures

CHECKPOINT_VERSION = 1
SCORE_DISTANCES = ("squared", "euclidean")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_PROJECT_CHUNK = 16384  # rows per projection matmul, at fixed offsets (same numbers streamed or not)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into the convolution
    (inference only; about 2x faster MobileNetV2 features on CPU). Modifies and returns ``model``."""
    for mod in model.modules():
        if not isinstance(mod, nn.Sequential):
            continue
        names = list(mod._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = mod._modules[a], mod._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                mod._modules[a] = fuse_conv_bn_eval(conv, bn)
                mod._modules[b] = nn.Identity()
    return model


class _DiskBank:
    """Train features appended to an unlinked temporary file (page cache, not this process's memory);
    ``rows(idx)`` reads back the selected rows."""

    def __init__(self, d: int, dtype: torch.dtype, folder: Path | None) -> None:
        self.d, self.dtype = d, dtype
        self.np_dtype = np.float16 if dtype == torch.float16 else np.float32
        self.row_bytes = d * np.dtype(self.np_dtype).itemsize
        self.file = tempfile.TemporaryFile(dir=folder if folder and Path(folder).is_dir() else None)
        self.n = 0

    def append(self, rows: torch.Tensor) -> None:
        self.file.write(rows.cpu().numpy().astype(self.np_dtype, copy=False).tobytes())
        self.n += len(rows)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.d

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        self.file.flush()
        fd = self.file.fileno()
        out = np.empty((len(idx), self.d), dtype=self.np_dtype)
        for i, j in enumerate(np.asarray(idx).tolist()):
            out[i] = np.frombuffer(os.pread(fd, self.row_bytes, j * self.row_bytes), dtype=self.np_dtype)
        self.file.close()
        return torch.from_numpy(out)


def _use_gpu_faiss(device: torch.device) -> bool:
    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@register_method("patchcore")
class PatchCore:
    """PatchCore (Roth et al., CVPR 2022): locally aware patch features, greedy coreset, nearest-neighbour scores."""

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        ratio = float(cfg.coreset.ratio)
        if not 0 < ratio <= 1:
            raise ConfigError(f"method.coreset.ratio={ratio} must be in (0, 1]")
        algorithm = str(cfg.coreset.get("algorithm", "auto"))
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"method.coreset.algorithm={algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if str(cfg.get("bank_storage", "memory")) not in ("memory", "disk"):
            raise ConfigError(f"method.bank_storage={cfg.get('bank_storage')!r}; choose memory or disk")
        if str(cfg.get("bank_storage", "memory")) == "disk" and self._unprojected(cfg):
            raise ConfigError("method.bank_storage=disk needs the projected coreset: set method.coreset.projection_dim=128")
        if str(cfg.get("score_distance", "squared")) not in SCORE_DISTANCES:
            raise ConfigError(f"method.score_distance={cfg.get('score_distance')!r}; choose squared or euclidean")
        self.knn = KnnSpec.from_cfg(cfg.get("knn"))
        if str(cfg.get("bank_dtype", "float32")) not in BANK_DTYPES:
            raise ConfigError(f"method.bank_dtype={cfg.get('bank_dtype')!r}; choose float32 or float16")
        bb = cfg.backbone
        self.layers = list(bb.layers) if bb.get("layers") else default_layers(bb.name)
        self.backbone = build_backbone(bb.name, bb.weights)
        self.model = self._make_model()
        self.index: faiss.Index | None = None
        self.bank: torch.Tensor | None = None  # the coreset, [M, D] on CPU
        self.grid: tuple[int, int] | None = None
        self.timings: dict[str, float] = {}
        self.coreset_stats: dict = {}
        self._backbone_s = 0.0
        self._rescored = 0  # patches re-scored by brute force after an approximate search
        self._register_backbone_timer()

    def _register_backbone_timer(self) -> None:
        """Accumulate the seconds spent inside the backbone (the rest of extraction is aggregation and I/O)."""
        start: list[float] = []

        def pre(_m, _inp):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start.append(time.perf_counter())

        def post(_m, _inp, _out):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._backbone_s += time.perf_counter() - start.pop()

        self.model.extractor.register_forward_pre_hook(pre)
        self.model.extractor.register_forward_hook(post)

    def _make_model(self) -> PatchFeatures:
        backbone = self.backbone
        if self.cfg.get("fuse_bn", True):  # inference copy with batch norms folded into the convolutions
            backbone = fuse_conv_bn(copy.deepcopy(self.backbone).eval())
        ext = FeatureExtractor(backbone, self.layers)
        model = PatchFeatures(ext, int(self.cfg.layer_dim), int(self.cfg.embed_dim), int(self.cfg.patch_size))
        model = model.to(self.device).eval()
        if self.cfg.get("channels_last", True):
            model = model.to(memory_format=torch.channels_last)
        return model

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> patch embeddings [B, h*w, D] (float32, on the model's device)."""
        x = x.to(self.device, non_blocking=True)
        if self.cfg.get("channels_last", True):
            x = x.contiguous(memory_format=torch.channels_last)
        use_amp = self.device.type == "cuda" and bool(self.cfg.get("amp", False))  # paper: float32
        # CPU: a few images at a time keep the activations in cache and the peak memory low; GPU: the whole batch
        step = int(self.cfg.get("embed_batch", 4) or len(x)) if self.device.type == "cpu" else len(x)
        parts = []
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use_amp):
            for chunk in x.split(step):
                emb, grid = self.model(chunk)  # [b, h*w, D]
                parts.append(emb.float())
        self.grid = grid
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _cache_parts(self, loader: DataLoader, split: str) -> dict | None:
        """What the embeddings of ``loader`` depend on; None when the files cannot be listed (no caching)."""
        samples = getattr(loader.dataset, "samples", None)
        if self.ctx.feature_cache is None or not samples:
            return None
        bb = self.cfg.backbone
        files = hashlib.sha256("\n".join(str(s.path) for s in samples).encode()).hexdigest()
        return {"kind": "patchcore-embeddings", "backbone": str(bb.name), "weights": weights_id(bb.weights),
                "seed": self.ctx.seed if str(bb.weights) == "none" else None, "layers": self.layers,
                "layer_dim": int(self.cfg.layer_dim), "embed_dim": int(self.cfg.embed_dim),
                "patch_size": int(self.cfg.patch_size), "data": self.ctx.data_id, "split": split, "files": files}

    def embed_all(self, loader: DataLoader, split: str, desc: str) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Embeddings of every image, streamed into one preallocated tensor [N, h*w, D]; cached when enabled.

        Returns (embeddings, patch grid (h, w), input size (H, W)).
        """
        parts = self._cache_parts(loader, split)
        if parts is not None:
            out = FeatureCache(self.ctx.feature_cache).get_or_compute(parts, lambda: self._embed_all(loader, desc))
        else:
            out = self._embed_all(loader, desc)
        self.grid = tuple(int(v) for v in out["grid"].tolist())
        return out["emb"].to(self.device), self.grid, tuple(int(v) for v in out["input_size"].tolist())

    def _embed_all(self, loader: DataLoader, desc: str) -> dict[str, torch.Tensor]:
        n_images = len(loader.dataset)
        emb_all: torch.Tensor | None = None
        row = 0
        size = (0, 0)
        for batch in progress(loader, desc, self.ctx.progress, unit="batch"):
            emb = self.embed(batch["image"])  # [B, h*w, D]
            size = tuple(batch["image"].shape[-2:])
            if emb_all is None:
                emb_all = torch.empty(n_images, *emb.shape[1:], dtype=torch.float32, device=self.device)
            emb_all[row : row + len(emb)] = emb
            row += len(emb)
        if emb_all is None:
            raise ValueError(f"{desc}: empty loader")
        return {"emb": emb_all[:row], "grid": torch.tensor(self.grid), "input_size": torch.tensor(size)}

    @staticmethod
    def _unprojected(cfg: DictConfig) -> bool:
        """Greedy on the unprojected features: ``coreset.projection_dim=null`` (or the legacy ``exact=true`` of
        checkpoints written before the rename)."""
        return bool(cfg.coreset.get("exact")) or not cfg.coreset.get("projection_dim")

    def _projection_dim(self, d: int) -> int | None:
        if self._unprojected(self.cfg) or int(self.cfg.coreset.projection_dim) >= d:
            return None
        return int(self.cfg.coreset.projection_dim)

    def _stream_train(self, loader: DataLoader) -> tuple[torch.Tensor | "_DiskBank", torch.Tensor | None]:
        """Embeddings of all train images streamed into a preallocated bank [N*h*w, D] (``bank_dtype``; with
        ``bank_storage=disk`` an unlinked temporary file instead), and their random projection [N*h*w, d]
        computed in fixed chunks of rows as they arrive (None without projection)."""
        n_images = len(loader.dataset)
        dtype = BANK_DTYPES[str(self.cfg.get("bank_dtype", "float32"))]
        on_disk = str(self.cfg.get("bank_storage", "memory")) == "disk"
        feats = proj = weight = None
        pending: list[torch.Tensor] = []  # rows not yet projected (bank dtype)
        row = done = 0
        for batch in progress(loader, "patchcore: features", self.ctx.progress, unit="batch"):
            emb = self.embed(batch["image"])  # [B, h*w, D]
            flat = emb.reshape(-1, emb.shape[-1]).to(dtype)  # [B*h*w, D]
            if feats is None:
                n_rows, d = n_images * emb.shape[1], emb.shape[-1]
                feats = _DiskBank(d, dtype, self.ctx.work_dir) if on_disk else torch.empty(n_rows, d, dtype=dtype, device=self.device)
                dim = self._projection_dim(d)
                if dim is not None:
                    proj = torch.empty(n_rows, dim, dtype=torch.float32, device=self.device)
                    weight = projection_matrix(d, dim, self.ctx.seed).to(self.device)
            if on_disk:
                feats.append(flat)
                pending.append(flat)
            else:
                feats[row : row + len(flat)] = flat
            row += len(flat)
            while proj is not None and row - done >= _PROJECT_CHUNK:
                chunk = self._take_pending(pending, _PROJECT_CHUNK) if on_disk else feats[done : done + _PROJECT_CHUNK]
                torch.matmul(chunk.float(), weight, out=proj[done : done + _PROJECT_CHUNK])
                done += _PROJECT_CHUNK
        if feats is None:
            raise ValueError("patchcore: empty training loader")
        if proj is not None and done < row:
            chunk = self._take_pending(pending, row - done) if on_disk else feats[done:row]
            torch.matmul(chunk.float(), weight, out=proj[done:row])
        return (feats if on_disk else feats[:row]), (proj[:row] if proj is not None else None)

    @staticmethod
    def _take_pending(pending: list[torch.Tensor], n: int) -> torch.Tensor:
        """The first ``n`` pending rows (removed from ``pending``)."""
        rows = torch.cat(pending) if len(pending) > 1 else pending[0]
        pending[:] = [rows[n:]] if len(rows) > n else []
        return rows[:n]

    def fit(self, train_loader: DataLoader) -> None:
        """Stream patch features of all normal images into a preallocated bank (projected on the way),
        select the greedy coreset, index it."""
        t0 = time.perf_counter()
        self._backbone_s = 0.0
        if self._cache_parts(train_loader, "train") is not None:
            emb, _, _ = self.embed_all(train_loader, "train", "patchcore: features")  # [N, h*w, D]
            feats = emb.reshape(-1, emb.shape[-1]).to(BANK_DTYPES[str(self.cfg.get("bank_dtype", "float32"))])
            del emb
            dim = self._projection_dim(feats.shape[1])
            proj = project(feats, dim, self.ctx.seed, chunk=_PROJECT_CHUNK) if dim is not None else None
        else:
            feats, proj = self._stream_train(train_loader)  # [N*h*w, D], [N*h*w, d]
        t1 = time.perf_counter()
        n_rows = feats.shape[0]
        n_select = max(1, int(n_rows * float(self.cfg.coreset.ratio)))  # the official sampler's int(N * ratio)
        idx = self._select(feats if proj is None else proj, n_select)
        del proj
        if isinstance(feats, _DiskBank):
            bank = feats.rows(idx).float()
        else:
            bank = feats[torch.as_tensor(idx, device=feats.device)].float().cpu().contiguous()  # [M, D]
        del feats
        t2 = time.perf_counter()
        self._build_index(bank)
        t3 = time.perf_counter()
        self.timings.update(extract_s=t1 - t0, backbone_s=self._backbone_s, coreset_s=t2 - t1, index_s=t3 - t2,
                            n_patches=float(n_rows), n_selected=float(n_select))

    def _select(self, bank: torch.Tensor, n_select: int) -> np.ndarray:
        """Greedy coreset indices on the (projected) bank: CPU kernels, or the plain loop on a GPU."""
        algorithm = str(self.cfg.coreset.get("algorithm", "auto"))
        start, seed = int(self.cfg.coreset.start_points), self.ctx.seed
        self.coreset_stats = {}
        if bank.device.type != "cpu":
            if algorithm == "accelerated":
                raise ConfigError("method.coreset.algorithm=accelerated runs on CPU; use auto or plain on a GPU")
            idx = greedy_coreset(bank, n_select, projection_dim=None, start_points=start, seed=seed,
                                 show_progress=self.ctx.progress, algorithm=algorithm, stats=self.coreset_stats)
            return idx.cpu().numpy()
        arr = bank.numpy() if bank.dtype == torch.float32 else bank.float().numpy()
        return select_coreset(arr, n_select, start, seed, self.ctx.progress, algorithm, self.coreset_stats)

    def _build_index(self, bank: torch.Tensor | None = None, index: faiss.Index | None = None) -> None:
        """The ``method.knn`` index of the memory bank (``index``: one read from a checkpoint). Exact search on
        CPU: ``self.bank`` is a view of the index's own storage; approximate indexes run on the CPU."""
        bank = self.bank if bank is None else bank
        assert bank is not None
        m, d = bank.shape
        if self.knn.index != "flat":
            self.index = set_search_params(index, self.knn) if index is not None else build_index(bank.numpy(), self.knn)
            self.bank = bank
            return
        index = faiss.IndexFlatL2(d)
        if _use_gpu_faiss(self.device):
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, self.device.index or 0, index)
            index.add(bank.numpy())
            self.bank = bank
        else:
            index.add(bank.numpy())
            self.bank = torch.from_numpy(faiss.rev_swig_ptr(index.get_xb(), m * d).reshape(m, d))  # no second copy
        self.index = index

    def _search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's squared L2 distances [Q, k] (clamped at 0) and bank row ids [Q, k] (-1: fewer than k found)."""
        assert self.index is not None
        q = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
        d2, ids = self.index.search(q, k)
        return np.maximum(d2, 0), ids

    def _patch_scores(self, d2: np.ndarray) -> np.ndarray:
        """Squared distances [Q, k] -> patch scores [Q]: the mean over the k neighbours of the squared distance
        (``score_distance=squared``, the official code) or of the distance (``euclidean``)."""
        dist = d2 if str(self.cfg.get("score_distance", "squared")) == "squared" else np.sqrt(d2)
        return dist.mean(axis=1)

    def _exact_maxima(self, emb: torch.Tensor, patch: np.ndarray, nn_ids: np.ndarray) -> None:
        """After an approximate search: make every image's maximal patch score exact, in place.

        An approximate index returns true distances to possibly wrong neighbours, so a patch score is never below
        the exact one. Re-scoring the current maximal patch by brute force until the maximum is a re-scored patch
        therefore yields the exact image score (and its exact nearest neighbours ``nn_ids`` for eq. 7); misses
        elsewhere in the map stay. Without this, a handful of missed patches per image decide the image score.
        """
        assert self.bank is not None
        k = nn_ids.shape[-1]
        for i in range(len(patch)):
            done = np.zeros(patch.shape[1], dtype=bool)
            while not done[int(np.argmax(patch[i]))]:
                top = np.argsort(-np.where(done, -np.inf, patch[i]), kind="stable")[:8]  # 8 highest not re-scored
                top = top[~done[top]]
                q = np.ascontiguousarray(emb[i, torch.from_numpy(top)].cpu().numpy(), dtype=np.float32)  # [t, D]
                d2, best = faiss.knn(q, self.bank.numpy(), k)  # brute force, [t, k] each
                patch[i, top] = self._patch_scores(np.maximum(d2, 0))
                nn_ids[i, top] = best
                done[top] = True
                self._rescored += len(top)

    def _reweight(self, emb: torch.Tensor, patch_scores: np.ndarray, nn_ids: np.ndarray) -> np.ndarray:
        """Paper eq. 7: scale the max patch score by how isolated its nearest memory patch is."""
        assert self.bank is not None
        b_nn = min(int(self.cfg.reweight_neighbours), len(self.bank))  # faiss pads missing neighbours with -1
        out = np.empty(len(patch_scores), dtype=np.float32)
        for i in range(len(patch_scores)):
            j = int(np.argmax(patch_scores[i]))
            m_star = int(nn_ids[i, j, 0])
            _, neigh = self._search(self.bank[m_star : m_star + 1], b_nn)  # N_b(m*), includes m* itself
            neigh = neigh[0][neigh[0] >= 0]
            d = torch.cdist(emb[i, j][None].cpu(), self.bank[neigh])[0]  # [b]
            w = 1.0 - torch.softmax(d.double(), 0)[0].item()
            out[i] = w * patch_scores[i, j]
        return out

    def _test_embeddings(self, loader: DataLoader):
        """Yield (embeddings [B, h*w, D], input size, seconds spent): from the cache, or streamed per batch."""
        if self._cache_parts(loader, "test") is not None:
            t = time.perf_counter()
            emb_all, _, size = self.embed_all(loader, "test", "patchcore: predict")
            dt = time.perf_counter() - t
            step = max(1, int(getattr(loader, "batch_size", None) or 32))
            for start in range(0, len(emb_all), step):
                yield emb_all[start : start + step], size, dt if start == 0 else 0.0
            return
        it = iter(progress(loader, "patchcore: predict", self.ctx.progress, unit="batch"))
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                return
            emb = self.embed(batch["image"])
            yield emb, tuple(batch["image"].shape[-2:]), time.perf_counter() - t

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Image scores [N] (max patch score) and blurred, upsampled patch-score maps [N, H, W]."""
        if self.index is None:
            raise RuntimeError("PatchCore.predict called before fit or load")
        k = int(self.cfg.num_nn)
        sigma = float(self.cfg.blur_sigma)
        scores, maps = [], []
        t_search = t_post = 0.0
        t_embed = 0.0
        self._rescored = 0
        for emb, input_size, dt in self._test_embeddings(test_loader):  # [B, h*w, D]
            t_embed += dt
            b, p, d = emb.shape
            ts = time.perf_counter()
            d2, ids = self._search(emb.reshape(b * p, d), k)  # [B*h*w, k]
            patch = self._patch_scores(d2).reshape(b, p)  # [B, h*w]
            if self.knn.index != "flat":
                self._exact_maxima(emb, patch, ids.reshape(b, p, k))
            t_search += time.perf_counter() - ts
            tp = time.perf_counter()
            if self.cfg.get("reweight", False):
                scores.append(self._reweight(emb, patch, ids.reshape(b, p, k)))
            else:
                scores.append(patch.max(axis=1))
            h, w = self.grid
            up = F.interpolate(torch.from_numpy(patch).reshape(b, 1, h, w), size=input_size,
                               mode="bilinear", align_corners=False)[:, 0].numpy()  # [B, H, W]
            if sigma > 0:
                up = np.stack([ndimage.gaussian_filter(m, sigma=sigma) for m in up])
            maps.append(up.astype(np.float32))
            t_post += time.perf_counter() - tp
        self.timings.update(search_s=t_search, postprocess_s=t_post, predict_embed_s=t_embed,
                            rescored_patches=float(self._rescored))
        return Prediction(np.concatenate(scores), np.concatenate(maps))

    def save(self, directory: str | Path) -> None:
        """Write ``patchcore.pt`` (config, backbone weights, memory bank) and ``index.faiss``."""
        if self.bank is None:
            raise RuntimeError("PatchCore.save called before fit")
        out = Path(directory)
        save_method_state(out / "patchcore.pt", "patchcore", CHECKPOINT_VERSION, self.cfg, layers=self.layers,
                          grid=list(self.grid or ()), backbone=self.backbone.state_dict(), bank=self.bank)
        index = self.index
        if self.knn.index == "flat" and _use_gpu_faiss(self.device):
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(out / "index.faiss"))

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "PatchCore":
        """Restore a fitted model without refitting (no weights download: the backbone is in the file)."""
        path = Path(directory) / "patchcore.pt"
        state, cfg = load_method_state(path, "patchcore", CHECKPOINT_VERSION)
        bank = _checked_bank(state.get("bank"), path)
        cfg.backbone.weights = "none"
        self = cls(cfg, ctx)
        self.backbone.load_state_dict(state["backbone"])
        self.model = self._make_model()  # the inference copy from the loaded weights
        self._register_backbone_timer()
        self.layers = list(state["layers"])
        self.grid = tuple(state["grid"]) or None
        index = None
        index_file = Path(directory) / "index.faiss"
        if self.knn.index != "flat" and index_file.is_file():  # the approximate index as fitted (no re-training)
            index = faiss.read_index(str(index_file))
            if index_kind(index) != self.knn.index or index.ntotal != len(bank) or index.d != bank.shape[1]:
                raise ConfigError(f"{index_file} does not match {path} (a {index_kind(index)} index of "
                                  f"{index.ntotal} x {index.d}, bank {tuple(bank.shape)}); retrain with save_model=true")
        self._build_index(bank, index)
        return self


def _checked_bank(bank: object, path: Path) -> torch.Tensor:
    """The memory bank of a checkpoint as float32 [M, D]; empty, misshapen or non-finite -> ConfigError naming the file."""
    if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or bank.shape[0] == 0 or bank.shape[1] == 0:
        shape = tuple(bank.shape) if isinstance(bank, torch.Tensor) else type(bank).__name__
        raise ConfigError(f"{path}: the memory bank is empty or not a [M, D] matrix ({shape}); retrain with save_model=true")
    bank = bank.float().contiguous()
    bad = int((~torch.isfinite(bank)).any(dim=1).sum())
    if bad:
        raise ConfigError(f"{path}: the memory bank has {bad} of {len(bank)} rows with NaN or infinite values; "
                          f"retrain with save_model=true")
    return bank
