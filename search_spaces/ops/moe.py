"""Mixture-of-experts MLP whose experts are a multiplication MLP and a shift MLP, with a latency-aware router loss.

The router is a linear layer with noisy top-k gating (Shazeer et al., 2017). The load-balancing loss is
``cv²(importance ⊙ lat) + cv²(load ⊙ lat)``, where ``lat`` is a per-expert latency vector given from outside (the
latency predictor supplies it). With ``lat = 1`` it is the standard balance loss; with a slower expert weighted more,
balancing the *weighted* load sends more tokens to the faster expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.normal import Normal


EXPERT_KINDS = ("dense", "shift")  # the default experts of an MoE: the paper's (search_spaces.registry has them all)


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)**2``: zero when all entries are equal."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + eps)


def balance_loss(importance: torch.Tensor, load: torch.Tensor, latency: torch.Tensor) -> torch.Tensor:
    """The latency-aware load-balancing loss ``cv²(importance ⊙ lat) + cv²(load ⊙ lat)``."""
    latency = latency.to(importance)
    return cv_squared(importance * latency) + cv_squared(load * latency)


class GridExpert(nn.Module):
    """An expert made from an MLP with a depthwise conv over the token grid between its layers (PVTv2's
    ``fc1 -> [relu] -> dwconv -> act -> fc2``), run on the tokens routed to it: ``fc1`` and ``fc2`` on those tokens
    only, the conv over the grid with every token routed elsewhere at zero, so a token's neighbours count when they
    came to this expert too."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor, rows: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``x``: ``[P, C]``, its first ``len(rows)`` rows the tokens at flat positions ``rows`` of the ``grid``
        ``(images, H, W)`` (the rest padding); returns ``[P, C]``."""
        mlp, n = self.mlp, rows.numel()
        images, h, w = grid
        hidden = mlp.fc1(x)
        canvas = hidden.new_zeros(images * h * w, hidden.shape[-1]).index_copy(0, rows, hidden[:n])
        canvas = canvas.reshape(images, h, w, -1).permute(0, 3, 1, 2)
        mixed = mlp.dwconv(mlp.relu(canvas)).permute(0, 2, 3, 1).reshape(images * h * w, -1)[rows]
        if len(hidden) > n:  # keep the padded shape the kernels were compiled for
            mixed = torch.cat([mixed, mixed.new_zeros(len(hidden) - n, mixed.shape[1])])
        return mlp.drop(mlp.fc2(mlp.drop(mlp.act(mixed))))


def token_buckets(assignments: int, points: int = 8) -> list[int]:
    """The token counts an expert's batch is padded up to when compiled kernels run it: ``assignments/points``,
    ``2·assignments/points``, ..., ``assignments`` (``assignments`` = tokens × top_k). Kernels are compiled per shape,
    so a fixed grid keeps their number bounded; the latency model profiles exactly these counts."""
    return sorted({max(1, -(-assignments * (i + 1) // points)) for i in range(points)})


def bucket_tokens(count: int, assignments: int, points: int = 8) -> int:
    """The smallest grid count of :func:`token_buckets` that holds ``count`` tokens."""
    return next(b for b in token_buckets(assignments, points) if b >= count)


@dataclass(frozen=True)
class RouterStats:
    """What the router did in the last forward pass (detached, per expert)."""

    fraction: torch.Tensor  # share of token assignments each expert received (sums to 1)
    importance: torch.Tensor  # sum of gate values per expert
    load: torch.Tensor  # (smoothed) number of tokens per expert
    per_image: torch.Tensor  # [images, experts]: tokens each image (the input's leading dim) sent each expert


@dataclass(frozen=True)
class MoELoad:
    """How an MoE block's router spread its tokens, image by image: per expert, the share of images that sent it
    each number of token assignments (a histogram over ``0 .. top_k·T``).

    The kernels run an expert at the bucket (:func:`search_spaces.ops.moe.token_buckets`) that holds the tokens of
    the whole batch, and bucketing is a step function: the bucket of the average count is not the average bucket,
    and an expert that some images skip costs nothing for them. So an expert is priced over this distribution, taken
    to the batch size by treating its images as independent draws (the batch's count is the sum of its images').

    A timed forward pass is described exactly instead: ``images`` > 1 makes each histogram count whole passes of
    that many images (:meth:`of_pass`), which price that batch size as it ran.
    """

    histograms: tuple[tuple[float, ...], ...]  # expert -> share of samples by assignment count (index = count)
    images: int = 1  # images per sample

    @classmethod
    def from_counts(cls, per_image, images: int = 1) -> "MoELoad":
        """From the assignments each sample (an image, or a pass of ``images`` images) sent each expert
        (``[samples, experts]`` integers)."""
        counts = np.asarray(per_image, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] == 0 or (counts < 0).any():
            raise ValueError(f"per-image expert counts must be a non-empty [images, experts] array, got {counts.shape}")
        length = int(counts.max()) + 1
        return cls(tuple(tuple((np.bincount(c, minlength=length) / len(c)).tolist()) for c in counts.T), images)

    @classmethod
    def of_pass(cls, per_image) -> "MoELoad":
        """Exactly what one forward pass sent each expert (``[images, experts]``): prices that pass's batch size."""
        counts = np.asarray(per_image, dtype=np.int64)
        return cls.from_counts(counts.sum(0, keepdims=True), images=len(counts))

    @classmethod
    def at_shares(cls, shares: Sequence[float], assignments: int) -> "MoELoad":
        """Every image at the same split: ``shares[e]`` of its ``assignments`` (tokens × top_k) to expert ``e``."""
        counts = [min(assignments, max(0, round(s * assignments))) for s in shares]
        return cls.from_counts([counts])

    @classmethod
    def from_json(cls, value: Any) -> "MoELoad":
        """From :meth:`to_json`'s form, ``{"images": [[[count, share], ...], ...]}`` (one list per expert), with
        ``"per_sample": N`` for a load of passes of N images."""
        try:
            experts = value["images"]
            images = int(value.get("per_sample", 1))
            length = 1 + max(int(c) for expert in experts for c, _ in expert)
            histograms = []
            for expert in experts:
                row = [0.0] * length
                for count, share in expert:
                    row[int(count)] = float(share)
                histograms.append(tuple(row))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"an MoE load must look like {{'images': [[[count, share], ...], ...]}}, got {value!r}"
                             ) from e
        return cls(tuple(histograms), images)

    @classmethod
    def parse(cls, value: Any) -> "MoELoad | list[float]":
        """A stored routing: :meth:`to_json`'s form, or a plain list of expert shares (as older tables hold)."""
        if isinstance(value, list):
            return [float(v) for v in value]
        return cls.from_json(value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": [[[c, round(p, 6)] for c, p in enumerate(h) if p > 0]
                                          for h in self.histograms]}
        if self.images != 1:
            out["per_sample"] = self.images
        return out

    @property
    def shares(self) -> list[float]:
        """The share of all token assignments each expert received."""
        means = [sum(c * p for c, p in enumerate(h)) for h in self.histograms]
        return [m / (sum(means) or 1.0) for m in means]

    def batch_counts(self, expert: int, batch: int) -> np.ndarray:
        """The distribution of the token count a batch of ``batch`` images sends expert ``expert`` (index = count)."""
        if batch % self.images:
            raise ValueError(f"an MoE load of passes of {self.images} images cannot price a batch of {batch}")
        one = np.asarray(self.histograms[expert], dtype=np.float64)
        times = batch // self.images
        if times == 1:
            return one
        # The sum of independent samples: the times-fold convolution, as a power of the Fourier transform.
        size = times * (len(one) - 1) + 1
        n = 1 << max(1, (size - 1).bit_length())
        dist = np.fft.irfft(np.fft.rfft(one, n) ** times, n)[:size]
        dist[dist < 1e-12] = 0.0
        return dist / dist.sum()


class MoEMlp(nn.Module):
    """An MLP replaced by a mixture of experts, each expert a copy of the dense MLP, dense or shift.

    After each forward pass, :attr:`aux_loss` is the latency-aware balance loss (a tensor with a graph, to add to
    the training loss) and :attr:`stats` the router statistics, both computed from that pass's routing when read.

    Args:
        experts: the expert modules, each mapping ``[..., C] -> [..., C]``.
        kinds: the kind of each expert (``"dense"`` or ``"shift"``), for reporting and latency lookup.
        dim: the token width ``C``.
        top_k: experts per token.
        noisy_gating: add learned Gaussian noise to the router logits while training.
    """

    def __init__(
        self, experts: list[nn.Module], kinds: list[str], dim: int, top_k: int = 1, noisy_gating: bool = True
    ) -> None:
        super().__init__()
        if len(experts) != len(kinds) or len(experts) < 2:
            raise ValueError(f"MoEMlp needs at least two experts with one kind each, got {len(experts)} and {kinds}")
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k must be in [1, {len(experts)}], got {top_k}")
        self.experts = nn.ModuleList(experts)
        self.kinds = tuple(kinds)
        self.top_k = top_k
        self.noisy_gating = noisy_gating
        num = len(experts)
        # The bias lets the router express a global preference (e.g. for the faster expert) on any token mix.
        self.router = nn.Linear(dim, num, bias=True)
        self.noise = nn.Linear(dim, num, bias=False)
        # Near-uniform routing at the start (small router weights), so the first steps don't commit to one expert;
        # zero noise weights give every expert the same initial noise scale.
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)
        nn.init.zeros_(self.noise.weight)
        self.register_buffer("expert_latency", torch.ones(num))
        # The last forward pass's routing (top-k probabilities and experts, load, images): aux_loss and stats are
        # computed from it when asked for, so inference does not pay for them.
        self._route: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int] | None = None
        # Set by kernels.runtime: pad each expert's tokens up to token_buckets() so compiled kernels see few shapes.
        self.pad_to_buckets = False

    @torch.no_grad()
    def set_expert_latency(self, latency) -> None:
        """Set the per-expert latency vector ``lat`` of the balance loss (any positive scale; it is normalized)."""
        lat = torch.as_tensor(latency, dtype=torch.float32).flatten()
        if lat.numel() != len(self.experts) or not torch.all(torch.isfinite(lat)) or torch.any(lat <= 0):
            raise ValueError(
                f"expert latency must be {len(self.experts)} positive finite numbers, got {lat.tolist()}"
            )
        self.expert_latency.copy_(lat / lat.mean())

    def _route_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (the top-k probabilities [T, k], their experts [T, k], the smoothed load [E] while training with
        noise, else None)."""
        clean = self.router(x)
        noisy_training = self.noisy_gating and self.training
        if noisy_training:
            noise_std = F.softplus(self.noise(x)) + 1e-2
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_probs, top_idx = logits.softmax(dim=-1).topk(self.top_k, dim=-1)
        if noisy_training and self.top_k < len(self.experts):
            return top_probs, top_idx, self._prob_in_top_k(clean, logits, noise_std).sum(0)
        return top_probs, top_idx, None  # the load is the count of tokens each expert got (see _routing)

    @staticmethod
    def _gate_values(top_probs: torch.Tensor) -> torch.Tensor:
        """The gates of a token's chosen experts: their probabilities renormalized to sum to 1 (Shazeer et al.), so
        a token sent to one expert gets exactly that expert's output and a converted model starts close to its dense
        teacher. The sum is detached: with a live sum, top-1 gates would be the constant 1 and the router would get
        no gradient; this way top-1 gets d(log p) of its chosen expert."""
        return top_probs / top_probs.sum(dim=-1, keepdim=True).detach()

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        """Smooth estimate of P(expert in top-k) per token, differentiable in the router (Shazeer et al., 2017)."""
        top, _ = noisy.topk(self.top_k + 1, dim=-1)
        threshold_in = top[:, self.top_k : self.top_k + 1]  # the k+1-th value: what an expert in the top-k must beat
        threshold_out = top[:, self.top_k - 1 : self.top_k]  # the k-th value: what an outside expert must beat
        is_in = noisy > threshold_in
        # No argument validation: a diverging model must reach the trainer's NaN check, not fail in here.
        normal = Normal(torch.zeros((), device=clean.device), torch.ones((), device=clean.device),
                        validate_args=False)
        prob_if_in = normal.cdf((clean - threshold_in) / noise_std)
        prob_if_out = normal.cdf((clean - threshold_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out)

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x``: ``[..., C]``; ``feat_size``: the token grid ``(H, W)`` of a pyramid family's block (PVTv2), whose
        experts (:class:`GridExpert`) take the positions of their tokens.

        Dispatch: the token assignments sorted by expert once (stable, so each expert gets its tokens in order),
        each expert run on its slice and its output written into the result in place. A top-1 gate is exactly 1, so
        without gradients its multiplication is skipped (the same result)."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        top_probs, top_idx, load = self._route_tokens(tokens)
        self._route = (top_probs, top_idx, load, shape[0] if len(shape) > 2 else 1)
        assigned = top_idx.reshape(-1)
        order = assigned.argsort(stable=True)
        rows_of = order // self.top_k if self.top_k > 1 else order  # the token of each sorted assignment
        counts = torch.bincount(assigned, minlength=len(self.experts)).tolist()
        gated = self.top_k > 1 or torch.is_grad_enabled()
        gates = self._gate_values(top_probs).reshape(-1)[order].unsqueeze(1).to(tokens.dtype) if gated else None
        # top-1: every token written once, by its expert; top-k: each expert's weighted output added in turn
        out = tokens.new_empty(tokens.shape) if self.top_k == 1 else tokens.new_zeros(tokens.shape)
        start = 0
        for expert, n in zip(self.experts, counts):
            if n == 0:
                continue
            rows = rows_of[start:start + n]
            # padded with token 0's row up to the bucket: an expert's rows are independent, the padding is cut off
            picked = F.pad(rows, (0, bucket_tokens(n, assigned.numel()) - n)) if self.pad_to_buckets else rows
            chosen = tokens[picked]
            if isinstance(expert, GridExpert):
                if feat_size is None:
                    raise ValueError("experts over a token grid need the grid: call with feat_size")
                ran = expert(chosen, rows, (tokens.shape[0] // (feat_size[0] * feat_size[1]), *feat_size))
            else:
                ran = expert(chosen)
            ran = ran[:n] if gates is None else ran[:n] * gates[start:start + n]
            if self.top_k == 1:
                out.index_copy_(0, rows, ran)
            else:
                out.index_add_(0, rows, ran)
            start += n
        return out.reshape(shape)

    def _routing(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The last pass's (gates [T, E] with zeros off the top-k, top-k experts [T, k], load [E], images)."""
        top_probs, top_idx, load, images = self._route
        gates = torch.zeros(top_idx.shape[0], len(self.experts), dtype=top_probs.dtype, device=top_probs.device)
        gates = gates.scatter(-1, top_idx, self._gate_values(top_probs))
        return gates, top_idx, (gates > 0).float().sum(0) if load is None else load, images

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The latency-aware balance loss of the last forward pass (None before the first)."""
        if self._route is None:
            return None
        gates, _, load, _ = self._routing()
        return balance_loss(gates.sum(0), load, self.expert_latency)

    @property
    def stats(self) -> RouterStats | None:
        """What the router did in the last forward pass (None before the first)."""
        if self._route is None:
            return None
        gates, top_idx, load, images = self._routing()
        per_image = torch.zeros(images, len(self.experts), device=top_idx.device).scatter_add_(
            1, top_idx.reshape(images, -1), torch.ones(top_idx.numel(), device=top_idx.device).reshape(images, -1)
        )
        assigned = per_image.sum(0)
        return RouterStats(fraction=assigned / assigned.sum(), importance=gates.sum(0).detach(), load=load.detach(),
                           per_image=per_image.long())

    def extra_repr(self) -> str:
        return f"experts={list(self.kinds)}, top_k={self.top_k}, noisy_gating={self.noisy_gating}"


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the balance losses of every :class:`MoEMlp` in ``model`` from its last forward pass (None if none)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoEMlp) and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None
