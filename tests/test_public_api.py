"""The public API is what ``eval_recorder`` itself exports (modules may move behind it), and
imports run one way: the app -> the core <- the Flatland plug-in; the core never imports either."""

from __future__ import annotations

import ast

import eval_recorder
from conftest import ROOT

PUBLIC = [
    "FolderRefused",
    "FrameSource",
    "NoFrames",
    "RecordEpisodes",
    "RecordMultiAgentEpisodes",
    "RecordedEpisode",
    "RecordingError",
    "RecordingInTraining",
    "RecordingOptions",
    "RecordingSession",
    "RenderFrames",
    "ReplayDiverged",
    "add_recording",
    "record_episodes",
    "recording_session",
    "render_records",
]


def test_the_public_api_is_exported_from_the_package():
    assert eval_recorder.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(eval_recorder, name).__name__ == name


EXCEPTIONS = ["FolderRefused", "NoFrames", "RecordingError", "RecordingInTraining"]


def test_the_exported_errors_live_in_one_module_under_one_base_class():
    for name in EXCEPTIONS:
        error = getattr(eval_recorder, name)
        assert error.__module__ == "eval_recorder.errors"
        assert issubclass(error, eval_recorder.RecordingError)


def test_every_exception_class_of_the_package_is_defined_in_errors_py():
    defined = {}
    for path in sorted((ROOT / "eval_recorder").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception", "Refused", "Failed"))
                or getattr(base, "id", "") in EXCEPTIONS for base in node.bases
            ):
                defined[node.name] = str(path.relative_to(ROOT))
    assert set(defined.values()) == {"eval_recorder/errors.py"}
    assert sorted(defined) == ["EncoderFailed", "FolderRefused", "NoFrames", "RecordingError", "RecordingInTraining",
                               "ReplayDiverged", "RunnerRefused", "ScratchFailed", "StoreFailed", "UserError"]


def test_the_package_has_no_import_circle():
    """Every import between eval_recorder's modules, also those inside functions, runs one way."""
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for path in (ROOT / "eval_recorder").rglob("*.py")}
    graph = {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}
    for name in modules:  # ``from eval_recorder import eval_runner`` names a module too
        for node in ast.walk(ast.parse(modules[name].read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("eval_recorder", "eval_recorder.app",
                                                                    "eval_recorder.flatland"):
                graph[name] |= {f"{node.module}.{alias.name}" for alias in node.names
                                if f"{node.module}.{alias.name}" in modules}
    graph["eval_recorder"] = set()  # the package's lazy names (PEP 562) are looked up, not imported at load
    circles = []

    def visit(name, path):
        for other in sorted(graph[name]):
            if other in path:
                circles.append(path[path.index(other):] + [other])
            elif other not in done:
                visit(other, path + [other])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert circles == []


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
