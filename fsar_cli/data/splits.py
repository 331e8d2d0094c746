"""Split files -> entries (video id, class id, paths), in both formats the field uses.

- Reference format (CLIP-FSAR / HyRSM / MoLo / OTAM): ``train8/78687`` (class id after the split
  word, then the video id) or ``test0//videos/Class/file.avi`` (path after ``//``).
- Class-name format (TRX ``splits/*/trainlist0X.txt``): ``class name/video id``; class ids follow
  the recipe's class list (names compared without case, spaces or underscores), else first
  appearance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ..recipe import SPLITS, Recipe

__all__ = ["SplitEntry", "read_split", "load_split", "split_file", "format_path", "normalise_name"]

_REF = re.compile(r"^(train|val|test)(\d+)/(/?)(.+)$")


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split file."""

    split: str  # train / val / test
    class_id: int  # index into the recipe's class list for this split
    class_field: str  # "train8", or the class folder / name
    rel_path: str  # path after "//", or the video id
    line_no: int  # 1-based line in the split file

    @property
    def video_id(self) -> str:
        return PurePosixPath(self.rel_path).stem if "/" in self.rel_path else _stem(self.rel_path)

    @property
    def rel_stem(self) -> str:
        p = PurePosixPath(self.rel_path)
        return str(p.with_suffix("")) if p.suffix and len(p.suffix) <= 5 else self.rel_path

    @property
    def key(self) -> str:
        """Unique id of the entry inside its split: its relative path without extension."""
        return self.rel_stem


def _stem(s: str) -> str:
    p = PurePosixPath(s)
    return p.stem if p.suffix and len(p.suffix) <= 5 else s


def normalise_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def format_path(template: str, entry: SplitEntry, ext: str = "") -> str:
    try:
        return template.format(
            split=entry.split,
            class_field=entry.class_field,
            class_id=entry.class_id,
            rel_path=entry.rel_path,
            rel_stem=entry.rel_stem,
            video_id=entry.video_id,
            ext=ext,
        )
    except (KeyError, IndexError) as exc:
        raise DataError(
            f"path template {template!r} uses unknown field {exc}; fields: split, class_field, "
            "class_id, rel_path, rel_stem, video_id, ext"
        ) from None


def read_split(
    path: str | Path,
    split: str,
    class_names: tuple[str | None, ...] = (),
    fmt: str = "auto",
) -> list[SplitEntry]:
    """Parse one split file. Blank lines are skipped; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split file {str(path)!r} does not exist; run `fsar splits download` or point "
            "`--splits` / $FSAR_SPLITS / recipe key data.split_dir at the folder holding it"
        )
    lines = _decode(path).splitlines()
    entries: list[SplitEntry] = []
    lookup = {normalise_name(n): i for i, n in enumerate(class_names) if n}
    first_seen: dict[str, int] = {}
    for no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        m = _REF.match(line)
        use_ref = fmt == "reference" or (fmt == "auto" and m is not None)
        if use_ref:
            if m is None:
                raise DataError(
                    f"{path}:{no}: {line!r} is not in the reference format 'train8/78687' or "
                    "'test0//videos/Class/file.avi'"
                )
            word, num, _, rest = m.groups()
            entries.append(SplitEntry(split, int(num), f"{word}{num}", rest, no))
            continue
        if "/" not in line:
            raise DataError(
                f"{path}:{no}: {line!r} is neither 'train8/78687' nor 'class name/video id'"
            )
        cls, rest = line.split("/", 1)
        norm = normalise_name(cls)
        if norm in lookup:
            cid = lookup[norm]
        else:
            cid = first_seen.setdefault(norm, len(first_seen))
        entries.append(SplitEntry(split, cid, cls, rest, no))
    seen: dict[str, int] = {}
    dups = [(e, seen[e.key]) for e in entries if seen.setdefault(e.key, e.line_no) != e.line_no]
    if dups:  # one video twice becomes support and query of one episode
        e, first = dups[0]
        raise DataError(
            f"{path}:{e.line_no}: {e.key!r} repeats line {first} ({len(dups)} duplicate line(s)); "
            "remove the duplicates (each video once per split)"
        )
    return entries


def _decode(path: Path) -> str:
    """The text of a split file: UTF-8, a leading byte-order mark ignored."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: byte {data[exc.start : exc.start + 1]!r} is not UTF-8; save the split "
            "file as UTF-8"
        ) from None


def split_file(recipe: Recipe, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return recipe.split_dir() / f"{split}_few_shot.txt"


def load_split(recipe: Recipe, split: str) -> list[SplitEntry]:
    """The entries of one split of a recipe, checked against its class list."""
    names = recipe.data.classes.for_split(split)
    entries = read_split(split_file(recipe, split), split, names, recipe.data.split_format)
    if names:
        bad = sorted({e.class_id for e in entries if e.class_id >= len(names)})
        if bad:
            raise DataError(
                f"{split_file(recipe, split)}: class ids {bad} but recipe {recipe.name!r} lists "
                f"{len(names)} {split} classes (data.classes.{split})"
            )
    return entries
