"""Small helpers shared by tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from eval_recorder.recorder import RecordedEpisode


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones too)."""
    folder = Path(folder)
    result = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            result[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def episode(**overrides) -> RecordedEpisode:
    """A RecordedEpisode with fixed facts (``overrides`` replace some)."""
    fields = dict(
        mp4=b"\x00\x00\x00\x18ftypisom", env_label="flatland", weights_seq_no=3, env_seed=77, episode_length=41,
        episode_return=-12.5, frames=42, fps=10, width=484, height=484, runner_index=1,
        runner_host="nodeA", runner_pid=4242, runner_sequence=5,
        facts={"num_agents": 3, "agents_arrived": 2, "completion": 2 / 3},
    )
    fields.update(overrides)
    return RecordedEpisode(**fields)
