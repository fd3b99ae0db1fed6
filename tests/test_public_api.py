"""The public API is what ``eval_recorder`` itself exports (modules may move behind it), and
imports run one way: the app -> the core <- the Flatland plug-in; the core never imports either."""

from __future__ import annotations

import ast

import eval_recorder
from conftest import ROOT

PUBLIC = [
    "FolderRefused",
    "FrameSource",
    "RecordEpisodes",
    "RecordMultiAgentEpisodes",
    "RecordedEpisode",
    "RecordingOptions",
    "RecordingSession",
    "RenderFrames",
    "add_recording",
    "record_episodes",
    "recording_session",
]


def test_the_public_api_is_exported_from_the_package():
    assert eval_recorder.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(eval_recorder, name).__name__ == name


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_neither_flatland_nor_the_app():
    core = sorted((ROOT / "eval_recorder").glob("*.py"))
    assert len(core) > 15
    offending = {
        path.name: sorted(name for name in imported_modules(path)
                          if name.split(".")[0] == "flatland" or name.startswith(("eval_recorder.flatland",
                                                                                   "eval_recorder.app")))
        for path in core
    }
    assert {name: modules for name, modules in offending.items() if modules} == {}


def test_the_flatland_plug_in_does_not_import_the_app():
    plug_in = sorted((ROOT / "eval_recorder" / "flatland").glob("*.py"))
    assert {path.name: [m for m in imported_modules(path) if m.startswith("eval_recorder.app")]
            for path in plug_in} == {path.name: [] for path in plug_in}


def test_flatlands_frame_source_is_plugged_in_through_the_entry_point():
    from eval_recorder.flatland.frames import FlatlandFrames
    from eval_recorder.frames import plugin_sources

    assert plugin_sources() == (FlatlandFrames,)
