"""Running a predictor over a list of image files: read ahead, batch by the predictor's ``chunk``, skip (and
report) the files that cannot be read. The eval stage scores the results; the infer stage writes them."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from posekit.codec.decode import People
from posekit.data.images import CorruptImageError, read_image_rgb

log = logging.getLogger("posekit")


def read_images_ahead(paths: Sequence[Path], depth: int = 8) -> Iterator[tuple[Path, np.ndarray | Exception]]:
    """Yield (path, (H, W, 3) uint8 RGB image or the CorruptImageError) in order, reading ``depth`` images ahead
    in background threads (decoding releases the GIL, so reading overlaps the network)."""

    def read(path: Path) -> np.ndarray | Exception:
        try:
            return read_image_rgb(path)
        except CorruptImageError as e:
            return e

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque = deque()
        it = iter(paths)
        for path in it:
            pending.append((path, pool.submit(read, path)))
            if len(pending) >= depth:
                break
        while pending:
            path, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield path, fut.result()


@dataclass
class ImageRun:
    """What :func:`predict_images` did besides its callbacks."""

    skipped: list[str] = field(default_factory=list)  # the files that could not be read, in input order
    predict_s: float = 0.0  # seconds spent in ``predictor.predict_many`` (no reading, no callback)


def predict_images(predictor: Any, paths: Sequence[Path], on_result: Callable[[Path, np.ndarray, People], None],
                   desc: str = "predict", progress: bool = True) -> ImageRun:
    """Run ``predictor.predict_many`` over the images of ``paths``, ``predictor.chunk`` images per call (1 if it
    has none), and call ``on_result(path, image, people)`` for each readable image, in input order. Unreadable
    files are logged and listed in the returned :class:`ImageRun`, never raised: one bad file must not lose a
    whole run."""
    chunk = max(1, int(getattr(predictor, "chunk", 1)))
    run = ImageRun()
    buf: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if not buf:
            return
        t = time.perf_counter()
        people = predictor.predict_many([img for _, img in buf])
        run.predict_s += time.perf_counter() - t
        for (path, img), p in zip(buf, people):
            on_result(path, img, p)
        buf.clear()

    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for path, img in read_images_ahead(paths):
            if isinstance(img, Exception):
                run.skipped.append(str(path))
                log.warning("skipping image: %s", img)
            else:
                buf.append((path, img))
                if len(buf) >= chunk:
                    flush()
            bar.update(1)
        flush()
    return run
