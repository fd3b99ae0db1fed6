"""README.md and docs/*.md stay true: their Python examples are taken from the pages and
executed (the others compile); every ``run_eval.py`` and ``make run ARGS=...`` command in
their bash blocks is composed by Hydra exactly as the CLI would; the Layout list names every
module; every relative link resolves; and the README stays a five-minute read (at most
250 lines, a glossary of the words it uses, a link to each page of docs/)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, compose_config
from eval_recorder.video_index import read_manifest

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = (README, *sorted(DOCS.glob("*.md")))
MAX_README_LINES = 250
# The words README and docs use without explaining them each time; the README's glossary defines them.
GLOSSARY = ("env runner", "driver", "new API stack", "evaluation round", "weights version", "video folder", "sidecar")
# The Python blocks the slow tests below run, byte for byte: (page, heading).
RUN_BLOCKS = {
    (README, "Use 3: your own RLlib config (library)"),
    (DOCS / "your-own-env.md", "A flatland-rl user"),
    (DOCS / "your-own-env.md", "A gymnasium env"),
}

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: Path
    heading: str  # the nearest heading above the block (any level)
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)} / {self.heading}"


def parse(page: Path) -> tuple[list[Block], list[str], str]:
    """The fenced code blocks of ``page`` (also those indented in a list item, dedented),
    its headings in order, and its prose (the text outside the blocks)."""
    blocks, headings, prose = [], [], []
    heading, fence, indent, lines = "", None, "", []
    for line in page.read_text().splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence, indent, lines = match.group(2), match.group(1), []
        elif fence is not None and match and match.group(2) == "":
            blocks.append(Block(page, heading, fence, "".join(f"{text}\n" for text in lines)))
            fence = None
        elif fence is not None:
            lines.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
        else:
            prose.append(line)
            if heading_match := _HEADING.match(line):
                heading = heading_match.group(2)
                headings.append(heading)
    assert fence is None, f"{page.name}: a code block is not closed"
    return blocks, headings, "\n".join(prose) + "\n"


def code_blocks(language: str, pages=PAGES) -> list[Block]:
    """Every fenced block of ``language`` in ``pages`` (README.md and docs/*.md by default)."""
    return [block for page in pages for block in parse(page)[0] if block.language == language]


def section(page: Path, heading: str) -> str:
    """The prose of ``page`` under the ``## heading`` (to the next heading of that level)."""
    text = page.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def bash_commands(block: Block) -> list[list[str]]:
    """The words of each command of a bash block (continuation lines joined, comments dropped)."""
    return [words for line in block.text.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def run_eval_commands() -> list[tuple[Block, list[str]]]:
    """(block, arguments) of every ``run_eval.py`` command and every ``make run ARGS="..."``
    in the bash blocks of the README and docs/."""
    commands = []
    for block in code_blocks("bash"):
        for words in bash_commands(block):
            if len(words) > 1 and words[1] == "run_eval.py":
                commands.append((block, words[2:]))
            elif words[:2] == ["make", "run"]:
                arguments = [word.split("=", 1)[1] for word in words[2:] if word.startswith("ARGS=")]
                commands.append((block, shlex.split(" ".join(arguments))))
    return commands


def github_anchor(heading: str) -> str:
    """The #anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in parse(page)[1]:
        anchor = github_anchor(heading)
        result.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return result


def relative_links(page: Path) -> list[str]:
    """The targets of the links and images in ``page``'s prose (not in code) that point
    into this repository (no scheme such as https:)."""
    prose = re.sub(r"`[^`]+`", "", parse(page)[2])  # inline code: its brackets are not links
    return [target for target in _LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_pages_have_the_blocks_these_tests_run():
    python = {(block.page, block.heading) for block in code_blocks("python")}
    assert RUN_BLOCKS <= python
    assert len(code_blocks("python")) == len(python)  # one block per heading: each is found by it
    assert len(run_eval_commands()) >= 6
    assert [block.name for block in code_blocks("") if block.heading == "Layout"] == ["docs/contributing.md / Layout"]


@pytest.mark.parametrize(("block", "arguments"), run_eval_commands(),
                         ids=[f"{block.page.name}: {' '.join(arguments) or '(defaults)'}" for block, arguments in run_eval_commands()])
def test_every_run_eval_command_of_the_docs_composes(block, arguments):
    """Every key exists and every value has its type (placeholders such as PATH are strings)."""
    overrides = [a for a in arguments if not a.startswith("-")]
    if "-m" in arguments:  # a sweep: each of its combinations is one job; take the first
        overrides = [re.sub(r"=([^,]*),.*", r"=\1", o) for o in overrides]
    compose_config(*overrides)


def test_every_command_of_the_docs_names_what_exists():
    """``make`` targets are the Makefile's; ``.venv/bin/<tool>`` is installed in the venv;
    ``.venv/bin/python <script>`` names a script of the repository."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    venv_bin = Path(sys.executable).parent
    checked = 0
    for block in code_blocks("bash"):
        for words in bash_commands(block):
            if words[0] == "make":
                named = [word for word in words[1:] if "=" not in word]
                assert named and set(named) <= targets, (block.name, words)
            elif words[0].startswith(".venv/bin/"):
                assert (venv_bin / words[0].removeprefix(".venv/bin/")).exists(), (block.name, words)
                if words[0] == ".venv/bin/python" and words[1:2] != ["-m"]:
                    assert (ROOT / words[1]).is_file(), (block.name, words)
            else:
                pytest.fail(f"{block.name}: a command these tests do not check: {' '.join(words)}")
            checked += 1
    assert checked >= 30


def test_every_python_block_compiles():
    """The blocks the slow tests do not run (such as the Tune sketch, whose config comes from
    Use 3) are at least valid Python."""
    for block in code_blocks("python"):
        compile(block.text, block.name, "exec")


def block_text(page: Path, heading: str) -> str:
    (text,) = [block.text for block in code_blocks("python", [page]) if block.heading == heading]
    return text


@pytest.mark.slow
def test_library_example_runs_as_written(tmp_path):
    """The README's library example, byte for byte, in a fresh working directory: it
    finishes in about a minute on 2 cores, records both rounds on the same episodes (fixed
    evaluation seed) and writes wandb next to the video folder, nothing into the working
    directory but the folder it names."""
    script = tmp_path / "example.py"
    script.write_text(block_text(README, "Use 3: your own RLlib config (library)"))
    began = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Our own wandb run prints nothing on the console unless asked (RecordingOptions.wandb_console).
    assert [line for line in proc.stderr.splitlines() if line.startswith("wandb:")] == []
    assert proc.stdout.splitlines() == ["iteration 1 videos 2", "iteration 2 videos 4"]
    assert seconds < 180, f"the README promises about 30 s; it took {seconds:.0f} s"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["example.py", "runs"]
    assert sorted(path.name for path in (tmp_path / "runs" / "first").iterdir()) == ["videos", "wandb"]
    records = read_manifest(tmp_path / "runs" / "first" / "videos")
    assert [(r["training_iteration"], r["episode_index"]) for r in records] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    seeds = {(r["training_iteration"], r["episode_index"]): r["env_seed"] for r in records}
    assert seeds[1, 0] == seeds[2, 0] and seeds[1, 1] == seeds[2, 1]  # the same episodes every round
    (run_id,) = {r["run_id"] for r in records}
    assert list((tmp_path / "runs" / "first" / "wandb").glob(f"offline-run-*-{run_id}"))


def test_readme_sample_outputs_are_the_lines_a_run_prints():
    """The sample output of `make run` shows the lines of main_job/console in their order."""
    (sample,) = [block.text for block in code_blocks("", [README]) if block.heading == "What `make run` does"]
    patterns = [
        r"run [0-9a-f]{8}: videos go to outputs/\S+/videos",
        r"starting Ray \.\.\.",
        r"started a local Ray \(2 CPUs\)",
        r"building PPO \(env runners start, the first rail drawing takes a few seconds\) \.\.\.",
        *[rf"iteration {n}/3 \| env steps {400 * n} \| train return -?\d+\.\d\d \| evaluated weights of "
          rf"iteration {n}: completion \d\.\d\d \| videos written 2" for n in (1, 2, 3)],
        r"videos written: 6 in outputs/\S+/videos",
        r"manifest: outputs/\S+/videos/manifest\.jsonl",
        r"gallery: outputs/\S+/videos/index\.html \(open it in a browser, no server needed\)",
        r"checkpoint: outputs/\S+/checkpoints/it000003",
        r"wandb run: outputs/\S+/wandb/offline-run-\d{8}_\d{6}-[0-9a-f]{8}",
        r"upload it with: wandb sync outputs/\S+/wandb",
        r"log: outputs/\S+/run_eval\.log \(Ray's, RLlib's and wandb's own output\)",
        r"train on with: \.venv/bin/python run_eval\.py training\.iterations=6 recording\.resume=true "
        r"wandb\.run_id=([0-9a-f]{8}) hydra\.run\.dir=outputs/\S+",
    ]
    lines = sample.splitlines()
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), (line, pattern)


@pytest.mark.parametrize(("video_dir", "wandb_dir"), [
    ("videos", "videos-wandb"),  # its parent is the working directory: wandb goes beside, never into it
    ("runs/first/videos", "runs/first"),  # the main job's layout: runs/first/videos + runs/first/wandb
])
def test_library_wandb_folder_is_next_to_the_videos_never_the_working_directory(tmp_path, monkeypatch,
                                                                                 video_dir, wandb_dir):
    from eval_recorder import RecordingOptions
    from eval_recorder.options import default_wandb_dir

    monkeypatch.chdir(tmp_path)
    assert default_wandb_dir(RecordingOptions(video_dir=video_dir)) == tmp_path / wandb_dir


def run_example(text: str, folder: Path) -> subprocess.CompletedProcess:
    script = folder / "example.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_flatland_rl_users_example_runs_as_written(tmp_path):
    """flatland-rl's registration (ray_env_generator + an observation builder of flatland's
    registry) + APPO + add_recording, byte for byte from docs/your-own-env.md."""
    proc = run_example(block_text(DOCS / "your-own-env.md", "A flatland-rl user"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(" video tags ")[0] for line in lines] == ["iteration 1", "iteration 2"]
    records = read_manifest(tmp_path / "flatland_run" / "videos")
    assert [line.split(" video tags ")[1] for line in lines] == [
        str([r["training_iteration"] for r in records[:1]]), str([r["training_iteration"] for r in records])]
    assert [r["evaluation_round"] for r in records] == [1, 2]
    for record in records:
        assert record["file"].startswith(f"flatland-it{record['training_iteration']:06d}-ev")
        assert record["training_iteration"] <= record["evaluation_round"]  # APPO: the iteration that made the weights
        assert record["num_agents"] == 2 and "completion" in record


@pytest.mark.slow
def test_gymnasium_example_runs_as_written(tmp_path):
    proc = run_example(block_text(DOCS / "your-own-env.md", "A gymnasium env"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The eval runners draw with pygame headless: no display or sound device looked for.
    noise = [line for line in proc.stderr.splitlines() if "ALSA" in line or "XDG_RUNTIME_DIR" in line]
    assert noise == []
    records = read_manifest(tmp_path / "cartpole_run" / "videos")
    (run_id,) = {r["run_id"] for r in records}
    names = [f"cartpole-v1-it{it:06d}-ev{it:04d}-ep{ep:03d}-{run_id}.mp4" for it in (1, 2) for ep in (0, 1)]
    assert proc.stdout.splitlines()[-1] == str(names)
    assert [r["file"] for r in records] == names
    assert all(r["agent_returns"] is None and "completion" not in r for r in records)


def test_the_layout_lists_every_module_and_no_other():
    """The Layout section (docs/contributing.md) names each module of the core and of app/
    (and the flatland/ plug-in folder), and nothing that is gone: it cannot drift from the
    file list."""
    (layout,) = [block.text for block in code_blocks("") if block.heading == "Layout"]
    listed = set(re.findall(r"^\s+([\w/]+\.py|flatland/|app/)\s", layout, re.MULTILINE))
    package = ROOT / "eval_recorder"
    present = {path.name for path in package.glob("*.py")} | {path.name for path in (package / "app").glob("*.py")
                                                             if path.name != "__init__.py"}
    assert listed == present | {"flatland/", "app/"}


def test_the_readme_is_a_five_minute_read():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_resolves(page):
    """Files and folders exist; a #anchor is a heading of the page it points to."""
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert broken == []


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    pages = [page.name for page in PAGES[1:]]
    assert len(pages) >= 6
    assert [page for page in pages if (DOCS / page).resolve() not in linked] == []


def test_the_glossary_defines_the_words_before_the_readme_uses_them():
    """One bullet per word, in this order; none of them appears in the README above the
    glossary; the weights version names its sidecar field, the video folder its claim."""
    glossary = section(README, "Glossary")
    terms = re.findall(r"^\* \*\*(.+?)\*\*", glossary, re.MULTILINE)
    assert terms == list(GLOSSARY)
    above = README.read_text().split("\n## Glossary\n")[0].lower()
    assert [term for term in GLOSSARY if term.lower() in above] == []
    definitions = dict(zip(terms, re.split(r"^\* \*\*.+?\*\*", glossary, flags=re.MULTILINE)[1:]))
    assert "`weights_seq_no`" in definitions["weights version"]
    assert "**claims**" in definitions["video folder"] and "**run id**" in definitions["video folder"]
