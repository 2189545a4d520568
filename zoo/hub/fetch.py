"""A model card's weights into the cache: downloaded once, checksum-verified, reused after."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from prototxt import CaffeError


class WeightsUnavailable(CaffeError):
    """The card's weights cannot be downloaded automatically (one line saying how to get them)."""


def fetch_weights(card, directory: Optional[Path] = None, quiet: bool = False) -> tuple[Path, str]:
    """(path, how it was verified) of the card's weights, downloading them when not cached."""
    from zoo.hub import cards
    from zoo.hub.download import ALGORITHMS, ChecksumError, UnverifiedDownloadWarning, cache_dir, download
    weights = card.weights
    if not weights.urls:
        raise WeightsUnavailable(f"{card.name}: the weights cannot be downloaded automatically: {weights.how_to_get}; "
                                 f"then pass --weights FILE")
    dst = Path(directory or cache_dir()) / weights.filename
    given = dict(weights.checksum or {})
    # download() checks the strongest of the algorithms it knows; git_blob_sha1 (a git object id) is
    # checked here afterwards, the way zoo.hub.cards computes it.
    usable = {a: given[a] for a in ALGORITHMS if a in given}
    with warnings.catch_warnings():
        if not usable and "git_blob_sha1" in given:
            warnings.simplefilter("ignore", UnverifiedDownloadWarning)
        path = download(list(weights.urls), dst, usable or None, size=weights.size, quiet=quiet)
    if usable:
        return path, f"verified ({next(iter(usable))})"
    if "git_blob_sha1" in given:
        got = cards.file_digest(path, "git_blob_sha1")
        if got != given["git_blob_sha1"]:
            path.unlink()
            raise ChecksumError(f"{path.name}: git_blob_sha1 mismatch: expected {given['git_blob_sha1']}, got {got}; "
                                f"the file was removed", algorithm="git_blob_sha1",
                                expected=given["git_blob_sha1"], got=got)
        return path, "verified (git_blob_sha1)"
    return path, f"UNVERIFIED: {weights.checksum_note}"
