"""Where a split entry's video or frame folder is: the one rule every stage uses.

Videos are at ``data.root / data.video_layout`` (once per ``data.video_exts`` when the layout has
``{ext}``; the first that is a file wins), extracted frames at ``data.frames_root /
data.frames_layout`` (a folder); ``features.source`` says which one the cache and the fine-tuning
loader read. Extract, check, cache and the clip loader all ask :func:`locate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..recipe import Recipe
from .splits import SplitEntry, format_path

__all__ = ["Located", "video_candidates", "locate"]


@dataclass(frozen=True)
class Located:
    """Where an entry is: ``path`` (an existing file / folder) or None, and every place tried."""

    path: Path | None
    tried: tuple[Path, ...]
    kind: str  # "video file" or "frame folder"

    @property
    def expected(self) -> Path:
        """The first place looked at: what to name when the entry is missing."""
        return self.tried[0]


def _root(path: str | Path) -> Path:
    return Path(os.path.expanduser(str(path)))


def video_candidates(recipe: Recipe, root: str | Path, entry: SplitEntry) -> list[Path]:
    """Where an entry's video may be: ``root/<data.video_layout>``, once per ``video_exts``."""
    root, layout = _root(root), recipe.data.video_layout
    if "{ext}" not in layout:
        return [root / format_path(layout, entry)]
    return [root / format_path(layout, entry, ext.lstrip(".")) for ext in recipe.data.video_exts]


def locate(
    recipe: Recipe, entry: SplitEntry, *, frames: bool | None = None, root: str | Path | None = None
) -> Located:
    """The video file or frame folder of ``entry``.

    Args:
        recipe: the benchmark (``data.*`` layouts and roots).
        entry: one line of a split file.
        frames: look for the extracted frame folder (True) or the video (False); default: what
            ``features.source`` says.
        root: overrides ``data.frames_root`` / ``data.root``.
    """
    d = recipe.data
    if frames is None:
        frames = recipe.features.source == "frames"
    if frames:
        folder = _root(d.frames_root if root is None else root) / format_path(
            d.frames_layout, entry
        )
        return Located(folder if folder.is_dir() else None, (folder,), "frame folder")
    tried = video_candidates(recipe, d.root if root is None else root, entry)
    found = next((p for p in tried if p.is_file()), None)
    return Located(found, tuple(tried), "video file")
