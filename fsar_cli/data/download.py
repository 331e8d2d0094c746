"""Split files: fetch the standard few-shot splits from a pinned commit and verify their SHA-256.

The files come from ``alibaba-mmai-research/CLIP-FSAR`` at a fixed commit (the copies CLIP-FSAR,
HyRSM and MoLo share). The base URL can be replaced (``base_url`` or ``$FSAR_SPLITS_URL``), also
by a ``file://`` URL of a local folder laid out as ``<base>/<name>/<file>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import DataError
from ..ownership import claim

__all__ = [
    "BENCHMARKS",
    "SPLIT_FILES",
    "SPLIT_SHA256",
    "COMMIT",
    "DEFAULT_BASE_URL",
    "FileCheck",
    "download_splits",
    "verify_splits",
    "default_splits_dir",
]

log = logging.getLogger(__name__)

COMMIT = "30cf0a8cf5287a56a9f37bfceb28e82be776fc5d"
DEFAULT_BASE_URL = (
    f"https://raw.githubusercontent.com/alibaba-mmai-research/CLIP-FSAR/{COMMIT}"
    "/configs/projects/CLIPFSAR"
)
BENCHMARKS = ("ssv2_full", "ssv2_small", "kinetics100", "ucf101", "hmdb51")
SPLIT_FILES = ("train_few_shot.txt", "val_few_shot.txt", "test_few_shot.txt")

# SHA-256 of each split file at COMMIT (docs: BENCHMARKS.md).
SPLIT_SHA256: dict[str, dict[str, str]] = {
    "hmdb51": {
        "train_few_shot.txt": "59a5a0fe9c831bf9b46f05082a25828196a1b44ce4a2ab2dc64b17dead845069",
        "val_few_shot.txt": "33703ba18c1f036607b2c4872b1bb1c8e0290dcaaf9671264f7ec2ed1cf7de9a",
        "test_few_shot.txt": "ee8fa2c56e3ace7dcb2b025ea5c7ebf6d2c56f2f114c0bd3a992a894ace9b997",
    },
    "kinetics100": {
        "train_few_shot.txt": "92cac54f79940ab50bb296c48048260238ce82349ad87424994c9839c24a40c6",
        "val_few_shot.txt": "635b5e78f0031f1823379675cde8f1ffe7bedb1025a817df214a03b0c1674932",
        "test_few_shot.txt": "c43ada5179a8c402405849f1bab0df7cfa5d2e103fd943e5672f90ba188add53",
    },
    "ssv2_full": {
        "train_few_shot.txt": "886fdd2b9215328efaee7e73ae2ea8f5b3e99fd3732679481652bad1506df5c0",
        "val_few_shot.txt": "b9884e9e716fbb9a902121d797c0a43ec04517085eb6b36a2804e037db63d6eb",
        "test_few_shot.txt": "83a1ac8e7c6f720c55dced1dc9deae1c11fb8271f8a3bb1f0952aed068646a1e",
    },
    "ssv2_small": {
        "train_few_shot.txt": "724c01ee6595639d0829874e503936596de6564f7bf4293cf332b0f7891e0696",
        "val_few_shot.txt": "7b0162b14e42186122677eba5679b7b133017c46fbbfa8638682675aad9f4c0a",
        "test_few_shot.txt": "e8b4b69302bd85522fffdaebedd212557a8088e76df6dfcc76a82ac953fe739a",
    },
    "ucf101": {
        "train_few_shot.txt": "faeb4941e197fc6cefb603f7c277dffa854a5dac74a3ad11ce6955441751c3d5",
        "val_few_shot.txt": "aec8242d1f0af0da107eac5fd7be699f639bcb04078dcbb445fbe7bc8500acbd",
        "test_few_shot.txt": "160ae01885fb33b435e6312234e722f56c1016f2fe34a63c364c29ea4556c957",
    },
}


@dataclass(frozen=True)
class FileCheck:
    """One split file and its checksum status."""

    name: str  # benchmark
    file: str
    path: Path
    expected: str
    actual: str | None  # None when the file is absent
    status: str  # ok / mismatch / missing / downloaded

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "downloaded")


def default_splits_dir() -> Path:
    """``$FSAR_SPLITS`` if set, else ``~/.cache/fsar/splits``."""
    env = os.environ.get("FSAR_SPLITS")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "fsar" / "splits"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(name: str) -> None:
    if name not in SPLIT_SHA256:
        raise DataError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s)/file only
        return resp.read()


def download_splits(
    name: str,
    dest: str | Path | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    timeout: float = 30.0,
    on_progress: Callable[..., None] | None = None,
) -> list[FileCheck]:
    """Fetch the three split files of a benchmark into ``DEST/<name>/`` and verify them.

    All three are fetched and checked in memory first; only when every checksum matches are they
    written (each written aside, then renamed), so a failed or tampered download leaves nothing.
    Files already in place with the right checksum are not fetched again unless ``force``.

    Args:
        name: one of :data:`BENCHMARKS`.
        dest: the splits folder (default ``$FSAR_SPLITS`` or ``~/.cache/fsar/splits``).
        base_url: replaces :data:`DEFAULT_BASE_URL` (also ``$FSAR_SPLITS_URL``); ``file://`` works.
        force: fetch even when a verified copy exists.
        timeout: seconds per request.
        on_progress: ``on_progress(n=1, *, total=None, label=None)``, one step per file.

    Returns:
        One :class:`FileCheck` per file, status ``downloaded`` or ``ok`` (already present).

    Raises:
        DataError: unknown name, a fetch failed (the message names the URL and the manual fix),
            or a checksum did not match (naming the file and both sums).
    """
    _check_name(name)
    base = (base_url or os.environ.get("FSAR_SPLITS_URL") or DEFAULT_BASE_URL).rstrip("/")
    folder = Path(dest) if dest is not None else default_splits_dir()
    folder = folder / name
    report = on_progress or (lambda *a, **k: None)
    report(0, total=len(SPLIT_FILES))
    fetched: dict[str, bytes] = {}
    results: dict[str, FileCheck] = {}
    for file in SPLIT_FILES:
        expected = SPLIT_SHA256[name][file]
        path = folder / file
        if not force and path.is_file() and _sha256(path.read_bytes()) == expected:
            results[file] = FileCheck(name, file, path, expected, expected, "ok")
            report(1, label=file)
            continue
        if not force:  # a file that is not the verified split file is not fsar's to replace
            claim(
                path,
                kind="file",
                what=f"{name} split file (checksum is not sha256 {expected[:12]}...)",
                way_out="move it away, or pass --force to replace it with the verified download",
            )
        url = f"{base}/{name}/{file}"
        try:
            data = _fetch(url, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(
                f"could not fetch {url} ({reason}). Without network, copy {', '.join(SPLIT_FILES)} "
                f"by hand into {folder}/ and check them with `fsar splits verify {folder.parent}`"
            ) from None
        actual = _sha256(data)
        if actual != expected:
            raise DataError(
                f"{name}/{file} from {url} failed its checksum: expected sha256 {expected}, got "
                f"{actual}; nothing was written. Check the URL ($FSAR_SPLITS_URL) or copy the "
                "files by hand"
            )
        fetched[file] = data
        results[file] = FileCheck(name, file, path, expected, actual, "downloaded")
        report(1, label=file)
    if fetched:
        folder.mkdir(parents=True, exist_ok=True)
        for file, data in fetched.items():
            atomic.write_bytes(folder / file, data)
            log.debug("wrote %s", folder / file)
    return [results[f] for f in SPLIT_FILES]


def verify_splits(
    directory: str | Path | None = None, names: Sequence[str] | None = None
) -> list[FileCheck]:
    """Check split files in ``DIR/<name>/`` (or ``DIR`` itself if it is one benchmark's folder).

    Args:
        directory: a splits folder (default ``$FSAR_SPLITS`` or ``~/.cache/fsar/splits``).
        names: benchmarks to check (default: those with a folder in ``directory``).

    Returns:
        One :class:`FileCheck` per expected file, status ``ok``, ``mismatch`` or ``missing``.
    """
    base = Path(directory) if directory is not None else default_splits_dir()
    if not base.is_dir():
        raise DataError(f"splits folder {str(base)!r} does not exist; run `fsar splits download`")
    if (
        names is None
        and base.name in SPLIT_SHA256
        and any((base / f).exists() for f in SPLIT_FILES)
    ):
        folders = {base.name: base}  # DIR is itself e.g. .../ucf101
    else:
        for n in names or ():
            _check_name(n)
        wanted = names if names is not None else [n for n in BENCHMARKS if (base / n).is_dir()]
        if not wanted:
            raise DataError(
                f"{base} holds no benchmark folder ({', '.join(BENCHMARKS)}); "
                "run `fsar splits download NAME`"
            )
        folders = {n: base / n for n in wanted}
    checks: list[FileCheck] = []
    for name, folder in folders.items():
        for file in SPLIT_FILES:
            path = folder / file
            expected = SPLIT_SHA256[name][file]
            if not path.is_file():
                checks.append(FileCheck(name, file, path, expected, None, "missing"))
                continue
            actual = _sha256(path.read_bytes())
            status = "ok" if actual == expected else "mismatch"
            checks.append(FileCheck(name, file, path, expected, actual, status))
    return checks
