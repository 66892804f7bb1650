"""The meme bank of MOD-GPT: the memes a model can answer with, their features, and retrieval over them."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MemeRetrieval:
    """Candidate memes ranked for one `[TAG]`, nearest first, with their distances to the predicted feature."""

    meme_ids: list[str]
    distances: list[float]


class MemeBank(nn.Module):
    """
    The memes a model can answer with, and retrieval over them: meme ids, their normalised features (a buffer, saved
    with the model), and their distances to predicted features. A model's bank keeps its ids in the list
    `config.meme_bank_ids` itself, so the saved config always lists the bank; `copy()` gives an independent bank.

    Args:
        ids (`list[str]`): Ids of the memes, used in place.
        feature_size (`int`): Size of a meme feature vector.
        distance (`str`, *optional*, defaults to `"l2"`): `"l2"` or `"cosine"`, the distance that ranks memes.
    """

    def __init__(self, ids: list[str], feature_size: int, distance: str = "l2"):
        super().__init__()
        self.ids = ids
        self.distance = distance
        self.register_buffer("features", torch.zeros(len(ids), feature_size))

    def __len__(self) -> int:
        return len(self.ids)

    def copy(self) -> "MemeBank":
        bank = MemeBank(list(self.ids), self.features.shape[-1], self.distance)
        bank.features = self.features.clone()
        return bank

    @torch.no_grad()
    def add(self, meme_ids: list[str], features: torch.Tensor) -> None:
        """Add memes with their normalised `features`; an id already in the bank gets its features replaced."""
        if len(meme_ids) != len(features) or len(set(meme_ids)) != len(meme_ids):
            raise ValueError(f"Got {len(meme_ids)} meme ids (distinct ones required) for {len(features)} memes.")
        features = features.detach().to(self.features)
        position = {meme_id: index for index, meme_id in enumerate(self.ids)}
        known = torch.tensor([meme_id in position for meme_id in meme_ids], dtype=torch.bool)
        rows = torch.tensor([position[meme_id] for meme_id in meme_ids if meme_id in position], dtype=torch.long)
        bank = self.features.clone()
        bank[rows.to(bank.device)] = features[known.to(features.device)]
        self.features = torch.cat([bank, features[~known.to(features.device)]])
        self.ids.extend(meme_id for meme_id, is_known in zip(meme_ids, known.tolist()) if not is_known)

    def lookup(self, meme_ids: list[str]) -> torch.Tensor:
        """Features of the given memes, `(len(meme_ids), feature_size)`."""
        if isinstance(meme_ids, str) or not isinstance(meme_ids, Sequence):
            raise ValueError(f"meme_ids must be a list of meme ids, got {type(meme_ids).__name__} {meme_ids!r}.")
        position = {meme_id: index for index, meme_id in enumerate(self.ids)}
        unknown = [meme_id for meme_id in meme_ids if not isinstance(meme_id, str) or meme_id not in position]
        if unknown:
            raise ValueError(f"Unknown meme id(s) {unknown}: not in the model's meme bank of {len(position)} memes.")
        rows = torch.tensor([position[meme_id] for meme_id in meme_ids], dtype=torch.long)
        return self.features[rows.to(self.features.device)]

    def distances(self, predictions: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """
        Distances `(num_predictions, num_candidates)` from each predicted feature `(num_predictions, features)` to
        candidate features: one set for all, `(num_candidates, features)`, or one set each, `(num_predictions,
        num_candidates, features)`. Matrix products throughout: no predictions x candidates x features tensor.
        """
        predictions, candidates = predictions.float(), candidates.float()
        one_set_each = candidates.dim() == 3
        if one_set_each:
            predictions = predictions.unsqueeze(1)
        if self.distance == "cosine":
            distances = 1.0 - F.normalize(predictions, dim=-1) @ F.normalize(candidates, dim=-1).transpose(-1, -2)
        else:
            distances = torch.cdist(predictions, candidates)
        return distances.squeeze(1) if one_set_each else distances

    def check_candidates(self, candidates: list[list[str]], num_dialogues: int) -> None:
        """Raise a `ValueError` naming the candidate list that is not a non-empty list of distinct ids of the bank."""
        if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) != num_dialogues:
            raise ValueError(
                f"candidates must hold one list of meme ids per dialogue ({num_dialogues}), got {candidates!r}."
            )
        known = set(self.ids)
        for index, ids in enumerate(candidates):
            if isinstance(ids, (str, Mapping)) or not isinstance(ids, Sequence) or not ids:
                raise ValueError(
                    f"candidates of dialogue {index}: expected a non-empty list of meme ids, got {ids!r}."
                )
            unknown = [meme_id for meme_id in ids if not isinstance(meme_id, str) or meme_id not in known]
            if unknown:
                raise ValueError(
                    f"candidates of dialogue {index}: {unknown} are not in the model's meme bank ({len(known)} memes)."
                )
            repeated = sorted({meme_id for meme_id in ids if ids.count(meme_id) > 1})
            if repeated:
                raise ValueError(f"candidates of dialogue {index}: {repeated} appear more than once.")

    def candidate_distances(self, predictions: torch.Tensor, candidates: list[list[str]]) -> torch.Tensor:
        """
        Distances `(num_predictions, longest_list)` from each prediction to its own candidates, the lists padded to
        the longest one and the padding at infinite distance.
        """
        sizes = torch.tensor([len(ids) for ids in candidates], device=self.features.device)
        is_candidate = torch.arange(int(sizes.max()), device=sizes.device) < sizes.unsqueeze(1)
        features = self.features.new_zeros((*is_candidate.shape, self.features.shape[-1]))
        features[is_candidate] = self.lookup([meme_id for ids in candidates for meme_id in ids])
        return self.distances(predictions, features).masked_fill(~is_candidate, float("inf"))

    def rank(
        self, predictions: torch.Tensor, candidates: list[list[str]] | None = None, top_k: int | None = None
    ) -> list[MemeRetrieval]:
        """
        Rank memes for each predicted feature `(num_predictions, feature_size)`, nearest first: the given candidate
        ids for each prediction (e.g. the official sets of 10 or 11 memes; sizes may differ within a batch), or the
        whole bank. `top_k` keeps the nearest `top_k` of each ranking.
        """
        if candidates is None:
            distances = self.distances(predictions, self.features)
            candidates = [self.ids] * len(predictions)
        elif len(candidates) != len(predictions):
            raise ValueError(f"Got {len(candidates)} candidate lists for {len(predictions)} predictions.")
        else:
            distances = self.candidate_distances(predictions, candidates)
        keep = distances.shape[-1] if top_k is None else min(top_k, distances.shape[-1])
        ranked_distances, order = distances.topk(keep, dim=-1, largest=False, sorted=True)
        # Padding sorts last (infinite distance): each list keeps as many entries as it has candidates.
        return [
            MemeRetrieval([ids[i] for i in row.tolist()[: len(ids)]], dist.tolist()[: len(ids)])
            for ids, row, dist in zip(candidates, order, ranked_distances)
        ]


__all__ = ["MemeBank", "MemeRetrieval"]
