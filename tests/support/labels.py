"""Reading the burned-in label of a recorded video back: which training iteration it names.

Holds:
  label_iteration()   the iteration (or None for "iteration ?") whose label text matches
                      a decoded frame's label strip best among candidates, with how much
                      better than the runner-up (the label is drawn before encoding, so
                      the decoded strip is compared with each candidate drawn by
                      ``overlay.burn_label`` on the pixels where the candidates differ).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from eval_recorder.overlay import burn_label, label_text, strip_height

__all__ = ["label_iteration"]


def _frame(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path} has no frame {index}")


def label_iteration(path: Path, *, candidates, step: int = 0, extra: str | None = None) -> tuple[int | None, float]:
    """(the candidate iteration whose label ``iteration k | step s | extra`` matches frame
    ``step`` of ``path`` best, the runner-up's error divided by the best one's)."""
    frame = _frame(Path(path), step)
    height, width = frame.shape[:2]
    strip = strip_height(height)
    decoded = frame[height - strip:].astype(np.float32)
    blank = np.zeros_like(frame)
    drawn = {k: burn_label(blank, label_text(training_iteration=k, step=step, extra=extra))[height - strip:]
             .astype(np.float32) for k in candidates}
    stack = np.stack(list(drawn.values()))
    differ = (stack != stack[0]).any(axis=(0, 3))  # pixels where some candidates differ
    errors = {k: float(np.abs(decoded - band)[differ].mean()) for k, band in drawn.items()}
    ranked = sorted(errors, key=errors.get)
    best, second = ranked[0], ranked[1]
    return best, errors[second] / max(errors[best], 1e-6)
