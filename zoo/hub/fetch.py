"""A model card's weights into the cache: downloaded once, checksum-verified, reused after."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prototxt import CaffeError


class WeightsUnavailable(CaffeError):
    """The card's weights cannot be downloaded automatically (one line saying how to get them)."""


def fetch_weights(card, directory: Optional[Path] = None, quiet: bool = False) -> tuple[Path, str]:
    """(path, how it was verified) of the card's weights, downloading them when not cached."""
    from zoo.hub.download import cache_dir, cache_path, download, pick_digest
    weights = card.weights
    if not weights.urls:
        raise WeightsUnavailable(f"{card.name}: the weights cannot be downloaded automatically: {weights.how_to_get}; "
                                 f"then pass --weights FILE")
    # Cards are validated on loading; the containment check here also covers a card built in code.
    dst = cache_path(directory or cache_dir(), weights.filename)
    # download() verifies every algorithm a card may give, before the file takes its final name.
    algorithm, _ = pick_digest(weights.checksum)
    path = download(list(weights.urls), dst, weights.checksum, size=weights.size, quiet=quiet)
    if algorithm is not None:
        return path, f"verified ({algorithm})"
    return path, f"UNVERIFIED: {weights.checksum_note}"
