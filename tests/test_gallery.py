"""The offline gallery: exact page structure and captions, the plot's points and the
comparison's groups, atomic writes, and real playback of real H.264 files in headless
Chromium (skipped, with how to install it, where it is missing)."""

from __future__ import annotations

import json
import os

import pytest

from eval_recorder.gallery import GALLERY, render_gallery, write_gallery
from eval_recorder.gallery_records import IterationSummary, iteration_summary, situations, video_caption
from eval_recorder.naming import video_stem
from eval_recorder.tags import TrainingTag
from eval_recorder.training_record import TRAINING
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.video_store import VideoStore
from helpers import episode
from support.chromium import Chromium, needs_chromium
from support.html_tree import Node, parse
from support.videos import encode, rgb_frames, tiny_mp4


def record(iteration: int, episode_index: int, *, evaluation_round: int | None = None, **overrides) -> dict:
    """A manifest record as VideoStore writes it (``overrides`` replace some fields); episode k
    plays seed 1000 + k, as fixed evaluation seeds do."""
    evaluation_round = iteration if evaluation_round is None else evaluation_round
    fields = dict(
        file=f"flatland-it{iteration:06d}-ev{evaluation_round:04d}-ep{episode_index:03d}-run1.mp4", env="flatland",
        training_iteration=iteration, env_steps=400 * iteration, evaluation_round=evaluation_round,
        episode_index=episode_index, env_seed=1000 + episode_index, episode_length=41, episode_return=-12.5,
        agent_returns=None, num_agents=3, agents_arrived=2, completion=2 / 3, frames=42, frame_every=1, fps=10,
        width=484, height=484, run_id="run1", checkpoint=None,
    )
    fields.update(overrides)
    return fields


def sections(page: str) -> list[tuple[str, str, list[str]]]:
    """[(section id, heading, [video src, ...]), ...] of the iteration sections, in page order."""
    return [
        (section.attrs["id"], section.find("h2").text(), [video.attrs["src"] for video in section.find_all("video")])
        for section in parse(page).find_all("section")
    ]


def captions(page: str) -> list[list[str]]:
    """Each listed video's caption lines (the children of its figcaption), in page order."""
    return [
        [line.text() for line in figure.find("figcaption").children if isinstance(line, Node)]
        for section in parse(page).find_all("section") for figure in section.find_all("figure")
    ]


def test_newest_iteration_first_grouped_by_iteration_then_round_and_episode():
    records = [
        record(1, 0), record(1, 1), record(3, 1), record(2, 1), record(2, 0),
        record(2, 0, evaluation_round=5), record(3, 0),
    ]
    page = render_gallery(records)
    assert sections(page) == [
        ("iteration-3", "Iteration 3", [
            "flatland-it000003-ev0003-ep000-run1.mp4", "flatland-it000003-ev0003-ep001-run1.mp4",
        ]),
        ("iteration-2", "Iteration 2", [
            "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
            "flatland-it000002-ev0005-ep000-run1.mp4",
        ]),
        ("iteration-1", "Iteration 1", [
            "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep001-run1.mp4",
        ]),
    ]
    tree = parse(page)
    nav = [link.attrs["href"] for link in tree.find("nav", class_="iterations").find_all("a")]
    assert nav == ["#iteration-3", "#iteration-2", "#iteration-1"]
    assert tree.find("p").text() == "7 videos of 3 training iterations, newest first · run run1"
    assert tree.find("head").find("title").text() == "Evaluation videos"


def test_captions_say_iteration_steps_episode_completion_return_and_checkpoint():
    checkpoint = "outputs/2026-11-23/20-03-27/checkpoints/it000012"
    page = render_gallery([
        record(12, 1, env_steps=4800, episode_return=-41.5),
        record(12, 0, evaluation_round=13, agents_arrived=3, episode_return=7.0, checkpoint=checkpoint),
    ])
    assert captions(page) == [
        ["iteration 12 · 4800 env steps · episode 1 · 2/3 arrived · return -41.50",
         "flatland-it000012-ev0012-ep001-run1.mp4"],
        ["iteration 12 · 4800 env steps · episode 0 · 3/3 arrived · return 7.00",
         "checkpoint outputs/2026-11-23/20-03-27/checkpoints/it000012",
         "flatland-it000012-ev0013-ep000-run1.mp4"],
    ]
    (first, second) = parse(page).find("section").find_all("figure")
    assert first.find("video").attrs == {
        "controls": None, "preload": "none", "src": "flatland-it000012-ev0012-ep001-run1.mp4",
        "width": "484", "height": "484",
    }
    assert first.find("a").attrs == {"class": "file", "href": "flatland-it000012-ev0012-ep001-run1.mp4"}
    assert second.find("figcaption").find_all("span")[1].attrs == {"class": "checkpoint"}
    assert parse(page).find("p").text() == "2 videos of 1 training iteration, newest first · run run1"


def test_everything_taken_from_records_is_escaped():
    name = """it's <b>&"bold".mp4"""
    checkpoint = """</span><script>alert("x")</script>"""
    page = render_gallery([record(1, 0, file=name, checkpoint=checkpoint, run_id="<i>run</i>")])
    assert "<b>" not in page and "<i>" not in page and "<script>alert" not in page
    assert page.count("<script") == 1  # the page's own, nothing from a record
    tree = parse(page)
    assert tree.find("section").find("video").attrs["src"] == "it%27s%20%3Cb%3E%26%22bold%22.mp4"
    assert tree.find("section").find("figure").find("a").attrs["href"] == "it%27s%20%3Cb%3E%26%22bold%22.mp4"
    assert captions(page) == [[
        "iteration 1 · 400 env steps · episode 0 · 2/3 arrived · return -12.50", f"checkpoint {checkpoint}", name,
    ]]
    assert tree.find("p").text() == "1 video of 1 training iteration, newest first · run <i>run</i>"


def test_the_page_fetches_nothing_from_anywhere_else():
    page = render_gallery([record(2, 0), record(1, 0, checkpoint="https://example.com/ckpt")])
    tree = parse(page)
    links = [node.attrs[key] for node in tree.descendants() for key in ("src", "href") if key in node.attrs]
    assert links == [
        "#iteration-1", "#iteration-2",  # the points of the return plot
        "#iteration-1", "#iteration-2",  # the points of the completion plot
        "#situation-1", "#compare",  # choose the one situation, close it
        "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000002-ev0002-ep000-run1.mp4",  # side by side
        "#iteration-2", "#iteration-1",
        "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep000-run1.mp4",
        "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep000-run1.mp4",
    ]
    assert not tree.find_all("link") and not tree.find_all("img") and not tree.find_all("iframe")
    style, script = tree.find("style").text(), tree.find("script").text()
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    assert "fetch" not in script and "http" not in script and "import" not in script


def test_records_it_cannot_show_are_left_out():
    good = record(1, 0)
    records = [
        record(1, 1, file="../elsewhere.mp4"), record(1, 2, file="sub/video.mp4"), record(1, 3, file=""),
        record(1, 4, file=None), record(1, 5, training_iteration="1"), record(1, 6, episode_return=None),
        {key: value for key, value in record(1, 7).items() if key != "env_steps"},
        5, ["flatland.mp4"], good, record(1, 8, env=["not", "a", "label"]),
    ]
    assert sections(render_gallery(records)) == [
        ("iteration-1", "Iteration 1", [good["file"], "flatland-it000001-ev0001-ep008-run1.mp4"]),  # a label or not
    ]


def test_no_videos_yet():
    tree = parse(render_gallery([]))
    assert tree.find("p").text() == "0 videos of 0 training iterations, newest first"
    assert not tree.find_all("section") and not tree.find_all("nav")


def test_write_gallery_shows_the_manifest_videos_present_and_replaces_the_page_atomically(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    for index in range(3):
        store.store(episode=episode(mp4=f"video {index}".encode()), stem=f"flatland-it000001-ev0001-ep{index:03d}-run1",
                    tag=TrainingTag(1, 400), evaluation_round=1, episode_index=index, checkpoint=None)
    (tmp_path / "flatland-it000001-ev0001-ep001-run1.mp4").unlink()  # removed by hand
    with (tmp_path / MANIFEST).open("a") as manifest:  # a record of a file that never arrived
        manifest.write(json.dumps(record(4, 0, file="flatland-it000004-ev0004-ep000-run1.mp4")) + "\n")

    path = write_gallery(tmp_path)
    assert path == tmp_path / GALLERY
    records = read_manifest(tmp_path)
    assert path.read_text() == render_gallery([records[0], records[2]])
    assert sections(path.read_text()) == [
        ("iteration-1", "Iteration 1", [
            "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep002-run1.mp4",
        ]),
    ]
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == [
        "flatland-it000001-ev0001-ep000-run1.json", "flatland-it000001-ev0001-ep000-run1.mp4",
        "flatland-it000001-ev0001-ep001-run1.json",
        "flatland-it000001-ev0001-ep002-run1.json", "flatland-it000001-ev0001-ep002-run1.mp4",
        GALLERY, MANIFEST,
    ]

    # The next round: a new page replaces the old one; a reader of the old one still has all of it.
    store.store(episode=episode(mp4=b"video 3"), stem="flatland-it000002-ev0002-ep000-run1", tag=TrainingTag(2, 800),
                evaluation_round=2, episode_index=0, checkpoint=None)
    with path.open() as old_reader:
        old_page = path.read_text()
        write_gallery(tmp_path)
        assert old_reader.read() == old_page
    assert [section[0] for section in sections(path.read_text())] == ["iteration-2", "iteration-1"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_page_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / GALLERY).write_text("the old page")

    def no_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_gallery(tmp_path)
    assert (tmp_path / GALLERY).read_text() == "the old page"
    assert os.listdir(tmp_path) == [GALLERY]


# --- the plot ------------------------------------------------------------------------------------


def test_iteration_summary_averages_each_iteration_and_skips_what_a_recovered_record_lacks():
    records = [
        record(2, 0, episode_return=-15.0, completion=0.5), record(1, 1, episode_return=-20.0, completion=0.5),
        record(1, 0, episode_return=-40.0, completion=0.0), record(2, 1, episode_return=-5.0, completion=0.5),
        record(3, 0, episode_return=0.0, completion=1.0),
        record(3, 1, recovered=True, episode_return=None, completion=None, env_seed=None),
    ]
    assert iteration_summary(records) == [
        IterationSummary(training_iteration=1, episodes=2, mean_return=-30.0, mean_completion=0.25),
        IterationSummary(training_iteration=2, episodes=2, mean_return=-10.0, mean_completion=0.5),
        IterationSummary(training_iteration=3, episodes=2, mean_return=0.0, mean_completion=1.0),
    ]
    cartpole = [record(1, 0, env="cartpole-v1", episode_return=21.0), record(1, 1, env="cartpole-v1", episode_return=9.0)]
    for r in cartpole:
        del r["num_agents"], r["agents_arrived"], r["completion"]
    assert iteration_summary(cartpole) == [IterationSummary(1, 2, 15.0, None)]
    assert iteration_summary([]) == []


def plots(page: str) -> dict[str, dict]:
    """{series: {points, dots, y ticks, x ticks, title}} of each plot of the page."""
    found = {}
    for svg in parse(page).find_all("svg", class_="plot"):
        assert svg.attrs["viewbox"] == "0 0 480 176" and (svg.attrs["width"], svg.attrs["height"]) == ("480", "176")
        found[svg.attrs["data-series"]] = {
            "points": svg.find("polyline", class_=svg.attrs["data-series"]).attrs["points"],
            "dots": [(a.attrs["href"], a.find("circle").find("title").text()) for a in svg.find_all("a")],
            "y ticks": [(t.text(), t.attrs["y"]) for t in svg.find_all("text", class_="y-tick")],
            "x ticks": [(t.text(), t.attrs["x"]) for t in svg.find_all("text", class_="x-tick")],
            "title": svg.find("text", class_="title").text(),
        }
    return found


def test_the_plot_shows_mean_return_and_completion_per_iteration_on_labelled_axes():
    # Plot area: x 52..460 (iterations 1..3), y 140..24 (return -30..0, completion 0..1).
    records = [
        record(1, 0, episode_return=-40.0, completion=0.0), record(1, 1, episode_return=-20.0, completion=0.5),
        record(2, 0, episode_return=-15.0, completion=0.5), record(2, 1, episode_return=-5.0, completion=0.5),
        record(3, 0, episode_return=0.0, completion=1.0), record(3, 1, episode_return=0.0, completion=0.5),
    ]
    page = render_gallery(records)
    assert plots(page) == {
        "return": {
            "points": "52.0,140.0 256.0,62.7 460.0,24.0",
            "dots": [
                ("#iteration-1", "iteration 1 · mean return -30.00 · 2 videos"),
                ("#iteration-2", "iteration 2 · mean return -10.00 · 2 videos"),
                ("#iteration-3", "iteration 3 · mean return 0.00 · 2 videos"),
            ],
            "y ticks": [("-30", "144.0"), ("-20", "105.3"), ("-10", "66.7"), ("0", "28.0")],
            "x ticks": [("1", "52.0"), ("2", "256.0"), ("3", "460.0")],
            "title": "mean return per training iteration",
        },
        "completion": {
            "points": "52.0,111.0 256.0,82.0 460.0,53.0",
            "dots": [
                ("#iteration-1", "iteration 1 · mean completion 25% · 2 videos"),
                ("#iteration-2", "iteration 2 · mean completion 50% · 2 videos"),
                ("#iteration-3", "iteration 3 · mean completion 75% · 2 videos"),
            ],
            "y ticks": [("0%", "144.0"), ("50%", "86.0"), ("100%", "28.0")],
            "x ticks": [("1", "52.0"), ("2", "256.0"), ("3", "460.0")],
            "title": "completion rate (agents arrived) per training iteration",
        },
    }
    tree = parse(page)
    assert [svg.children[1].text() for svg in tree.find_all("svg")] == [  # what a screen reader says
        "mean return per training iteration", "completion rate (agents arrived) per training iteration",
    ]
    # The page opens with the plot: right after the summary.
    body = [node for node in tree.find("body").children if isinstance(node, Node)]
    assert [node.tag for node in body[:3]] == ["h1", "p", "div"] and body[2].attrs == {"class": "plots"}


def test_an_env_without_completion_gets_a_return_plot_only():
    records = [record(iteration, 0, env="cartpole-v1", episode_return=10.0 * iteration) for iteration in (1, 2)]
    for r in records:
        del r["num_agents"], r["agents_arrived"], r["completion"]
    assert list(plots(render_gallery(records))) == ["return"]
    assert plots(render_gallery(records))["return"]["points"] == "52.0,140.0 460.0,24.0"


def test_one_iteration_is_one_dot_in_the_middle_with_ticks_around_it():
    assert plots(render_gallery([record(7, 0, episode_return=-12.5)]))["return"] == {
        "points": "256.0,82.0",
        "dots": [("#iteration-7", "iteration 7 · mean return -12.50 · 1 video")],
        "y ticks": [("-14", "144.0"), ("-13", "105.3"), ("-12", "66.7"), ("-11", "28.0")],
        "x ticks": [("7", "256.0")],
        "title": "mean return per training iteration",
    }


def test_a_thousand_iterations_stay_one_small_line():
    records = [record(iteration, 0, episode_return=float(iteration), completion=1.0) for iteration in range(1, 1001)]
    page = render_gallery(records)
    found = plots(page)
    assert len(found["return"]["points"].split()) == 1000 and found["return"]["dots"] == []
    assert found["return"]["points"].split()[::999] == ["52.0,139.9", "460.0,24.0"]
    assert [label for label, _ in found["return"]["x ticks"]] == ["1", "200", "400", "600", "800", "1000"]
    assert [label for label, _ in found["return"]["y ticks"]] == ["0", "500", "1000"]
    svgs = page[page.index('<div class="plots">'):page.index('<div class="compare"')]
    assert len(svgs) < 40_000  # both plots: about 13 bytes per iteration each


@pytest.mark.parametrize("iterations, labels", [
    ((1, 8), ["1", "2", "4", "6", "8"]),  # steps of 2, and the first iteration
    ((199, 1000), ["200", "400", "600", "800", "1000"]),  # 199 would crowd 200
    ((3, 37), ["3", "10", "20", "30", "37"]),  # and the last
    ((12, 13), ["12", "13"]),
])
def test_the_iteration_axis_labels_round_numbers_and_its_ends_where_there_is_room(iterations, labels):
    page = render_gallery([record(iteration, 0) for iteration in iterations])
    assert [label for label, _ in plots(page)["return"]["x ticks"]] == labels


def test_plots_per_env_when_a_folder_holds_two():
    records = [record(1, 0, episode_return=-1.0), record(2, 0, env="cartpole-v1", episode_return=5.0)]
    del records[1]["num_agents"], records[1]["agents_arrived"], records[1]["completion"]
    titles = [svg.find("text", class_="title").text() for svg in parse(render_gallery(records)).find_all("svg")]
    assert titles == [
        "cartpole-v1 · mean return per training iteration",
        "flatland · mean return per training iteration",
        "flatland · completion rate (agents arrived) per training iteration",
    ]


def test_the_return_plot_draws_the_training_return_beside_the_evaluation_return_with_a_legend():
    # Plot area: x 52..460 (iterations 1..4), y 140..24 (return -40..0).
    records = [record(1, 0, episode_return=-40.0), record(3, 0, episode_return=0.0)]
    training = [(1, -30.0), (2, -20.0), (3, -5.0), (4, -1.0)]
    page = render_gallery(records, training=training)
    (svg, _) = parse(page).find_all("svg", class_="plot")
    assert [(p.attrs["class"], p.attrs["points"]) for p in svg.find_all("polyline")] == [
        ("return", "52.0,140.0 324.0,24.0"),
        ("train", "52.0,111.0 188.0,82.0 324.0,38.5 460.0,26.9"),
    ]
    assert [(t.attrs["data-series"], t.text()) for t in svg.find_all("text", class_="legend")] == [
        ("return", "evaluation"), ("train", "training"),
    ]
    assert [line.attrs["class"] for line in svg.find_all("line") if line.attrs.get("y1") == "10"] == ["return", "train"]
    # Evaluation dots link to their section; training dots (no videos) only say their value.
    assert plots(page)["return"]["dots"] == [
        ("#iteration-1", "iteration 1 · mean return -40.00 · 1 video"),
        ("#iteration-3", "iteration 3 · mean return 0.00 · 1 video"),
    ]
    assert [c.find("title").text() for c in svg.find_all("circle", class_="train")] == [
        "iteration 1 · training return -30.00", "iteration 2 · training return -20.00",
        "iteration 3 · training return -5.00", "iteration 4 · training return -1.00",
    ]
    assert [label for label, _ in plots(page)["return"]["y ticks"]] == ["-40", "-30", "-20", "-10", "0"]
    assert [label for label, _ in plots(page)["return"]["x ticks"]] == ["1", "2", "3", "4"]
    completion = parse(page).find_all("svg", class_="plot")[1]
    assert not completion.find_all("text", class_="legend") and len(completion.find_all("polyline")) == 1
    # Without training returns, the plot is what it was: one line, no legend.
    assert not parse(render_gallery(records)).find_all("text", class_="legend")


def test_training_returns_go_on_no_plot_when_the_folder_holds_two_envs():
    records = [record(1, 0, episode_return=-1.0), record(2, 0, env="cartpole-v1", episode_return=5.0)]
    page = render_gallery(records, training=[(1, 3.0), (2, 4.0)])
    assert not [p for p in parse(page).find_all("polyline") if p.attrs["class"] == "train"]


def test_write_gallery_plots_the_folders_training_record_of_the_videos_run(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    store.store(episode=episode(episode_return=-10.0), stem="flatland-it000002-ev0001-ep000-run1",
                tag=TrainingTag(2, 800), evaluation_round=1, episode_index=0, checkpoint=None)
    store.record_training(1, env_steps=400, return_mean=-25.0)
    store.record_training(2, env_steps=800, return_mean=-15.0)
    with (tmp_path / TRAINING).open("a") as other:  # damage, and another run's line: no point
        other.write('{"training_iteration": 3, "episode_return_mean": 9.0, "run_id": "run9"}\n{"trai')
    page = write_gallery(tmp_path).read_text()
    assert page == render_gallery(read_manifest(tmp_path), training=[(1, -25.0), (2, -15.0)])
    assert [p.attrs["class"] for p in parse(page).find_all("polyline")] == ["return", "train", "completion"]
    (tmp_path / TRAINING).write_bytes(b"\x00\xff not json")  # damaged beyond use: no training line
    assert write_gallery(tmp_path).read_text() == render_gallery(read_manifest(tmp_path))


# --- posters -------------------------------------------------------------------------------------


def test_each_video_shows_its_poster_when_the_poster_is_there():
    shown, without = record(2, 0), record(1, 0)
    weird = record(3, 0, file="""it's <b>&"bold".mp4""")
    posters = {"flatland-it000002-ev0002-ep000-run1.jpg", """it's <b>&"bold".jpg"""}
    page = render_gallery([shown, without, weird], posters=posters)
    videos = {video.attrs["src"]: video.attrs for video in parse(page).find("body").descendants()
              if video.tag == "video"}
    assert videos == {
        "it%27s%20%3Cb%3E%26%22bold%22.mp4": {
            "controls": None, "preload": "none", "src": "it%27s%20%3Cb%3E%26%22bold%22.mp4",
            "poster": "it%27s%20%3Cb%3E%26%22bold%22.jpg", "width": "484", "height": "484"},
        shown["file"]: {"controls": None, "preload": "none", "src": shown["file"],
                        "poster": "flatland-it000002-ev0002-ep000-run1.jpg", "width": "484", "height": "484"},
        without["file"]: {"controls": None, "preload": "none", "src": without["file"], "width": "484", "height": "484"},
    }
    # The comparison's boxes too: every <video> of a video with a poster has it.
    assert [v.attrs.get("poster") for v in parse(page).find("div", class_="row").find_all("video")] == [
        None, "flatland-it000002-ev0002-ep000-run1.jpg", "it%27s%20%3Cb%3E%26%22bold%22.jpg"]
    assert "<b>" not in page


def test_write_gallery_names_a_poster_only_when_its_file_is_in_the_folder(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    for index in range(3):
        store.store(episode=episode(mp4=tiny_mp4(frames=2, shade=80 * index)),
                    stem=f"flatland-it000001-ev0001-ep{index:03d}-run1", tag=TrainingTag(1, 400), evaluation_round=1,
                    episode_index=index, checkpoint=None)
    (tmp_path / "flatland-it000001-ev0001-ep001-run1.jpg").unlink()
    (tmp_path / "flatland-it000001-ev0001-ep002-run1.jpg").unlink()
    (tmp_path / "flatland-it000001-ev0001-ep002-run1.jpg").mkdir()  # not a picture
    tree = parse(write_gallery(tmp_path).read_text())
    assert [video.attrs.get("poster") for video in tree.find("section").find_all("video")] == [
        "flatland-it000001-ev0001-ep000-run1.jpg", None, None]


# --- the comparison ------------------------------------------------------------------------------


def test_situations_group_each_seed_or_scenario_oldest_iteration_first():
    records = [
        record(3, 1), record(1, 0), record(2, 1), record(3, 0), record(1, 1), record(2, 0),
        record(2, 0, evaluation_round=5),  # the same situation evaluated again at iteration 2
        record(1, 2, env_seed=None),  # an unseeded reset: no situation to compare
        record(1, 3, scenario="Test_00_Level_0.pkl", env_seed=None), record(2, 3, scenario="Test_00_Level_0.pkl",
                                                                            env_seed=None),
        record(1, 4, env="cartpole-v1", env_seed=1000),  # another env with the same seed: another situation
    ]
    found = situations(records)
    assert [(s.env, s.scenario, s.env_seed, s.label, [r["file"] for r in s.records]) for s in found] == [
        ("cartpole-v1", None, 1000, "episode 4 · seed 1000", ["flatland-it000001-ev0001-ep004-run1.mp4"]),
        ("flatland", None, 1000, "episode 0 · seed 1000", [
            "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000002-ev0002-ep000-run1.mp4",
            "flatland-it000002-ev0005-ep000-run1.mp4", "flatland-it000003-ev0003-ep000-run1.mp4",
        ]),
        ("flatland", None, 1001, "episode 1 · seed 1001", [
            "flatland-it000001-ev0001-ep001-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
            "flatland-it000003-ev0003-ep001-run1.mp4",
        ]),
        ("flatland", "Test_00_Level_0.pkl", None, "episode 3 · scenario Test_00_Level_0.pkl", [
            "flatland-it000001-ev0001-ep003-run1.mp4", "flatland-it000002-ev0002-ep003-run1.mp4",
        ]),
    ]


def comparison(page: str) -> list[tuple[str, str, str, list[tuple[str, list[str]]]]]:
    """[(situation id, chooser link text, heading, [(video src, caption lines), ...]), ...]."""
    tree = parse(page)
    links = {a.attrs["href"]: a.text() for a in tree.find("nav", class_="situations").find_all("a")}
    return [
        (div.attrs["id"], links[f"#{div.attrs['id']}"], div.find("h3").text(), [
            (figure.find("video").attrs["src"], [line.text() for line in figure.find("figcaption").children])
            for figure in div.find("div", class_="row").find_all("figure")
        ])
        for div in tree.find_all("div", class_="situation")
    ]


def test_the_page_lets_the_user_pick_a_situation_and_see_it_across_iterations():
    scenario = """<b>"level"&'1'.pkl"""
    records = [
        record(2, 0, episode_return=-3.0, agents_arrived=3), record(1, 0, episode_return=-30.0, agents_arrived=0),
        record(1, 1, scenario=scenario, env_seed=None), record(2, 1, file="it's <2>.mp4", scenario=scenario,
                                                              env_seed=None),
    ]
    page = render_gallery(records)
    assert comparison(page) == [
        ("situation-1", "episode 0 · seed 1000", "episode 0 · seed 1000 · iterations 1 to 2, oldest first", [
            ("flatland-it000001-ev0001-ep000-run1.mp4", ["iteration 1", "0/3 arrived · return -30.00"]),
            ("flatland-it000002-ev0002-ep000-run1.mp4", ["iteration 2", "3/3 arrived · return -3.00"]),
        ]),
        ("situation-2", f"episode 1 · scenario {scenario}",
         f"episode 1 · scenario {scenario} · iterations 1 to 2, oldest first", [
             ("flatland-it000001-ev0001-ep001-run1.mp4", ["iteration 1", "2/3 arrived · return -12.50"]),
             ("it%27s%20%3C2%3E.mp4", ["iteration 2", "2/3 arrived · return -12.50"]),
         ]),
    ]
    assert "<b>" not in page and "<2>" not in page
    tree = parse(page)
    assert tree.find("nav", class_="situations").text() == (
        f"Compare: episode 0 · seed 1000 (2 videos) episode 1 · scenario {scenario} (2 videos)"
    )
    situation = tree.find_all("div", class_="situation")[0]
    # Shown only when chosen (CSS :target, no script needed); the script reveals "Play together".
    assert ".situation { display: none; }" in page and ".situation:target { display: block; }" in page
    assert situation.find("button").attrs == {"type": "button", "class": "play-together", "hidden": None}
    assert situation.find("a", class_="close").attrs["href"] == "#compare"
    assert [v.attrs for v in situation.find_all("video")][0] == {
        "controls": None, "preload": "none", "src": "flatland-it000001-ev0001-ep000-run1.mp4",
        "width": "484", "height": "484",
    }


def test_nothing_to_compare_without_seeds_or_scenarios_or_before_a_situation_is_played_twice():
    for records in (
        [record(1, 0, env_seed=None), record(2, 0, env_seed=None)],  # unseeded resets
        [record(1, 0), record(1, 1)],  # the first round
        [record(1, 0, env_seed=5), record(2, 0, env_seed=6)],  # a new seed every round
    ):
        page = render_gallery(records)
        tree = parse(page)
        assert not tree.find_all("div", class_="compare") and not tree.find_all("div", class_="situation")
        assert len(sections(page)) == len({r["training_iteration"] for r in records})


# --- records recovered after a crash ---------------------------------------------------------------


def test_recovered_records_are_listed_with_what_they_know():
    lost = record(3, 1, recovered=True, env_steps=None, episode_return=None, env_seed=None, episode_length=None,
                  num_agents=None, agents_arrived=None, completion=None, width=None, height=None)
    whole = record(3, 0, recovered=True)
    page = render_gallery([lost, whole, record(2, 0)])
    assert sections(page) == [
        ("iteration-3", "Iteration 3", [whole["file"], lost["file"]]),
        ("iteration-2", "Iteration 2", ["flatland-it000002-ev0002-ep000-run1.mp4"]),
    ]
    assert captions(page) == [
        ["iteration 3 · 1200 env steps · episode 0 · 2/3 arrived · return -12.50 · recovered", whole["file"]],
        ["iteration 3 · episode 1 · recovered", lost["file"]],
        ["iteration 2 · 800 env steps · episode 0 · 2/3 arrived · return -12.50", record(2, 0)["file"]],
    ]
    assert parse(page).find_all("section")[0].find_all("video")[1].attrs == {
        "controls": None, "preload": "none", "src": lost["file"],
    }
    # In the plot, the lost facts count for nothing; the whole record is a video like any other.
    assert plots(page)["return"]["dots"] == [
        ("#iteration-2", "iteration 2 · mean return -12.50 · 1 video"),
        ("#iteration-3", "iteration 3 · mean return -12.50 · 2 videos"),
    ]
    assert comparison(page) == [("situation-1", "episode 0 · seed 1000", "episode 0 · seed 1000 · iterations 2 to 3, "
                                 "oldest first", [
                                     (record(2, 0)["file"], ["iteration 2", "2/3 arrived · return -12.50"]),
                                     (whole["file"], ["iteration 3", "2/3 arrived · return -12.50 · recovered"]),
                                 ])]


def test_video_caption():
    assert video_caption(record(12, 1, env_steps=4800, episode_return=-41.5)) == (
        "iteration 12 · 4800 env steps · episode 1 · 2/3 arrived · return -41.50"
    )
    assert video_caption({"training_iteration": 3, "episode_index": None, "recovered": True, "env_steps": 1200,
                          "scenario": "a.pkl"}) == "iteration 3 · 1200 env steps · scenario a.pkl · recovered"
    with pytest.raises(TypeError):  # not recovered: a record without a return is not a video record
        video_caption(record(1, 0, episode_return=None))


def test_recovered_records_still_need_a_file_and_an_iteration():
    records = [record(1, 0, recovered=True, training_iteration=None), record(1, 1, recovered=True, file=None),
               {**record(1, 2, recovered=True), "episode_index": "2"},
               {**record(1, 3, recovered=True), "episode_index": None}]
    assert sections(render_gallery(records)) == [("iteration-1", "Iteration 1", [records[3]["file"]])]



# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path):
    """Start headless Chromium with extra flags: ``chromium("--window-size=800,600")``."""
    started = []

    def start(*flags: str) -> Chromium:
        started.append(Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log", *flags))
        return started[-1]

    yield start
    for browser in started:
        browser.close()


# Waits until every listed video has its metadata (the page itself starts loading it), then
# plays them all to the end; returns what the browser saw and shows.
_PLAYBACK_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const videos = [...document.querySelectorAll("section video")];
  for (let i = 0; i < 600 && videos.some((v) => v.readyState < 1 && !v.error); i++) await sleep(50);
  const durations = videos.map((v) => v.duration);
  for (const video of videos) video.play().catch(() => {});
  for (let i = 0; i < 600 && videos.some((v) => !v.ended && !v.error); i++) await sleep(50);
  return videos.map((video, i) => {
    const figcaption = video.closest("figure").querySelector("figcaption");
    return {
      section: video.closest("section").querySelector("h2").innerText,
      src: video.getAttribute("src"),
      duration: durations[i],
      size: [video.videoWidth, video.videoHeight],
      error: video.error && video.error.code,
      ended: video.ended,
      framesDecoded: video.getVideoPlaybackQuality().totalVideoFrames,
      caption: [...figcaption.children].map((line) => line.innerText),
      captionShown: figcaption.getBoundingClientRect().height > 0,
    };
  });
})()"""

# Scrolls through the page one screen at a time, waiting at each stop until the listed videos
# on screen have metadata, and counts how many videos hold a loaded player at once. Then loads
# every listed video at once (what a page without lazy loading does) and counts the failures.
_SCROLL_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const videos = [...document.querySelectorAll("section video")];
  const loaded = new Set(), failed = new Set();
  let mostAtOnce = 0;
  const look = () => {
    let live = 0, waiting = 0;
    videos.forEach((video, i) => {
      if (video.readyState > 0) { live++; if (video.duration > 0) loaded.add(i); }
      if (video.error) failed.add(i);
      const box = video.getBoundingClientRect();
      if (box.bottom > 0 && box.top < innerHeight && video.readyState === 0 && !video.error) waiting++;
    });
    mostAtOnce = Math.max(mostAtOnce, live);
    return waiting;
  };
  for (let y = 0; y < document.documentElement.scrollHeight; y += innerHeight) {
    window.scrollTo(0, y);
    for (let i = 0; i < 200 && look() > 0; i++) await sleep(50);
  }
  await sleep(300);
  look();
  const result = { videos: videos.length, loaded: loaded.size, failed: failed.size, mostAtOnce };
  for (const video of videos) {
    if (!video.hasAttribute("src")) video.src = video.dataset.src;
    video.preload = "auto";
    video.load();
  }
  for (let i = 0; i < 200 && videos.some((v) => v.readyState === 0 && !v.error); i++) await sleep(50);
  result.failedAllAtOnce = videos.filter((v) => v.error).length;
  return result;
})()"""


@needs_chromium
def test_chromium_plays_every_video_from_disk_with_the_manifest_captions(tmp_path, chromium):
    folder, sources = tmp_path / "videos", tmp_path / "sources"
    folder.mkdir()
    sources.mkdir()
    store = VideoStore(folder, run_id="run1")
    checkpoint = "outputs/2026-11-23/20-03-27/checkpoints/it000004"
    # (iteration, round, episode, frames, width, height, arrived, return, checkpoint)
    videos = [
        (1, 1, 0, 5, 64, 48, 0, -30.0, None), (1, 1, 1, 7, 64, 48, 1, -21.25, None),
        (2, 2, 0, 4, 96, 64, 2, -3.5, None), (2, 2, 1, 6, 96, 64, 3, 0.0, None),
        (4, 3, 0, 8, 80, 80, 2, -7.75, checkpoint),
    ]
    for iteration, evaluation_round, index, frames, width, height, arrived, episode_return, ckpt in videos:
        mp4 = encode(sources / f"{iteration}-{index}.mp4", frames=frames, width=width, height=height)
        tag = TrainingTag(iteration, 400 * iteration)
        store.store(
            episode=episode(mp4=mp4, frames=frames, width=width, height=height, fps=10, episode_return=episode_return,
                            facts={"num_agents": 3, "agents_arrived": arrived, "completion": arrived / 3}),
            stem=video_stem(env="flatland", training_iteration=iteration, evaluation_round=evaluation_round, episode_index=index, run_id="run1"),
            tag=tag, evaluation_round=evaluation_round, episode_index=index, checkpoint=ckpt,
        )
    with (folder / MANIFEST).open("a") as manifest:  # listed, but its file is not there
        manifest.write(json.dumps(record(3, 0, file="flatland-it000003-ev0009-ep000-run1.mp4")) + "\n")

    browser = chromium("--window-size=1280,2000")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _PLAYBACK_PROBE)

    by_file = {r["file"]: r for r in read_manifest(folder)}
    assert [video["src"] for video in seen] == [
        "flatland-it000004-ev0003-ep000-run1.mp4",
        "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
        "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep001-run1.mp4",
    ]
    for video in seen:
        r = by_file[video["src"]]
        assert video["error"] is None, video
        assert video["duration"] > 0 and video["duration"] == pytest.approx(r["frames"] / r["fps"], abs=0.05), video
        assert video["size"] == [r["width"], r["height"]], video
        assert video["ended"] and video["framesDecoded"] == r["frames"], video  # played, every frame decoded
        assert video["section"] == f"Iteration {r['training_iteration']}"
        expected = [
            f"iteration {r['training_iteration']} · {r['env_steps']} env steps · episode {r['episode_index']} · "
            f"{r['agents_arrived']}/{r['num_agents']} arrived · return {r['episode_return']:.2f}",
            *([f"checkpoint {r['checkpoint']}"] if r["checkpoint"] is not None else []),
            r["file"],
        ]
        assert video["caption"] == expected and video["captionShown"], video


# Without playing anything: waits until the posters are decoded (and the page's script has
# done what it does on load), then returns each listed video's box in page coordinates.
_BOXES_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const videos = [...document.querySelectorAll("section video")];
  await Promise.all(videos.filter((v) => v.poster).map((v) => {
    const image = new Image();
    image.src = v.poster;
    return image.decode().catch(() => {});
  }));
  await sleep(1000);
  return videos.map((video) => {
    const box = video.getBoundingClientRect();
    return { src: video.getAttribute("src"), poster: video.getAttribute("poster"), paused: video.paused,
             currentTime: video.currentTime, x: box.left + scrollX, y: box.top + scrollY,
             width: box.width, height: box.height };
  });
})()"""


def box_pictures(screenshot, boxes: list[dict], inset: int = 3) -> list:
    """Each box's picture in ``screenshot`` (a PNG of the whole page), a few pixels inside
    its edges, as an int16 RGB array."""
    import numpy as np
    from PIL import Image

    with Image.open(screenshot) as page:
        page = page.convert("RGB")
        return [np.asarray(page.crop((int(box["x"]) + inset, int(box["y"]) + inset, int(box["x"] + box["width"]) - inset,
                                      int(box["y"] + box["height"]) - inset)), dtype=np.int16) for box in boxes]


def difference(picture, frame) -> float:
    """Mean absolute difference between ``picture`` and ``frame`` scaled to its size, over
    the upper half (the lower one holds the video controls' shade)."""
    import numpy as np
    from PIL import Image

    scaled = Image.fromarray(frame).resize((picture.shape[1], picture.shape[0]), Image.Resampling.BILINEAR)
    top = picture.shape[0] // 2
    return float(np.abs(picture[:top] - np.asarray(scaled, dtype=np.int16)[:top]).mean())


@needs_chromium
def test_chromium_shows_every_videos_last_frame_without_playing_it(tmp_path, chromium):
    """The page reads at a glance: every box shows its video's poster (its last frame, where
    the outcome shows), also far below the screen where no video is loaded, and nothing plays."""
    folder, sources = tmp_path / "videos", tmp_path / "sources"
    folder.mkdir()
    sources.mkdir()
    store = VideoStore(folder, run_id="run1")
    last_frames, first_frames = {}, {}
    for iteration in range(1, 7):  # 6 sections of 2 videos: most boxes of the page are far off screen
        for index in range(2):
            frames = 3 + (iteration + index) % 5  # the bar ends somewhere else in each
            mp4 = encode(sources / f"{iteration}-{index}.mp4", frames=frames, width=64, height=48)
            path, _ = store.store(
                episode=episode(mp4=mp4, frames=frames, width=64, height=48, fps=10),
                stem=video_stem(env="flatland", training_iteration=iteration, evaluation_round=iteration,
                                episode_index=index, run_id="run1"),
                tag=TrainingTag(iteration, 400 * iteration), evaluation_round=iteration, episode_index=index,
                checkpoint=None,
            )
            decoded = rgb_frames(path)
            first_frames[path.name], last_frames[path.name] = decoded[0], decoded[-1]

    browser = chromium("--window-size=1280,700")

    def look(name: str) -> tuple[list[dict], list]:
        session = browser.open(write_gallery(folder))  # a new tab
        boxes = browser.evaluate(session, _BOXES_PROBE)
        return boxes, box_pictures(browser.screenshot(session, tmp_path / name, full_page=True), boxes)

    boxes, pictures = look("with-posters.png")
    assert [box["src"] for box in boxes] == sorted(last_frames, key=lambda name: (-int(name[11:17]), name))  # newest first
    assert [box["poster"] for box in boxes] == [box["src"].removesuffix(".mp4") + ".jpg" for box in boxes]
    assert max(box["y"] for box in boxes) > 3 * 700  # boxes far below the screen, never loaded
    for box, picture in zip(boxes, pictures):
        assert box["paused"] and box["currentTime"] == 0, box
        assert picture.shape[0] > 200 and picture.shape[1] > 280, (box, picture.shape)  # drawn at the box's size
        upper = picture[:picture.shape[0] // 2]
        assert upper.mean() > 60 and upper.std() > 20, box  # a picture, not a black rectangle
        to_last, to_first = difference(picture, last_frames[box["src"]]), difference(picture, first_frames[box["src"]])
        assert to_last < 8 and 2 * to_last < to_first, (box, to_last, to_first)  # the last frame, not the first

    # Without posters the same page shows black boxes (or, near the screen, first frames): none
    # shows its outcome.
    for path in folder.glob("*.jpg"):
        path.unlink()
    boxes, pictures = look("without-posters.png")
    assert [box["poster"] for box in boxes] == [None] * len(boxes)
    for box, picture in zip(boxes, pictures):
        to_last, to_first = difference(picture, last_frames[box["src"]]), difference(picture, first_frames[box["src"]])
        assert not (to_last < 8 and 2 * to_last < to_first), (box, to_last, to_first)
    # Far from the screen (never loaded): no picture at all, one flat dark shade.
    flat = [picture[:picture.shape[0] // 2] for picture in pictures]
    assert sum(upper.std() < 3 and upper.mean() < 80 for upper in flat) >= len(pictures) // 2, [
        (round(upper.mean()), round(upper.std())) for upper in flat]


@needs_chromium
def test_chromium_stays_under_its_player_limit_while_scrolling_a_long_gallery(tmp_path, chromium):
    """Chromium fails every media player of a page beyond a limit (1000; lowered here to 20
    so a short page shows it): the gallery loads only videos near the screen, frees the rest."""
    folder = tmp_path / "videos"
    folder.mkdir()
    encode(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    records = [
        record(iteration, index, width=64, height=48, frames=3) for iteration in range(30, 0, -1) for index in range(2)
    ]
    for r in records:
        os.link(tmp_path / "clip.mp4", folder / r["file"])
    (folder / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))

    browser = chromium("--window-size=800,600", "--max-web-media-player-count=20")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _SCROLL_PROBE)

    assert (seen["videos"], seen["loaded"], seen["failed"]) == (60, 60, 0), seen
    assert seen["mostAtOnce"] <= 20, seen
    assert seen["failedAllAtOnce"] > 0, seen  # all at once (no lazy loading) breaks videos: the limit is real


# Measures the plots, then chooses situation 2 by its link (as a user clicks it), waits until
# its videos have metadata, presses "Play together" and waits for them to end; then closes
# the situation and waits for its players to be released. Returns what the browser saw.
_COMPARISON_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const box = (element) => {
    const { left, top, width, height } = element.getBoundingClientRect();
    return { left, top, width, height };
  };
  const shown = () => [...document.querySelectorAll(".situation")].filter((s) => s.getClientRects().length).map((s) => s.id);
  const plots = [...document.querySelectorAll("svg.plot")].map((svg) => {
    const line = svg.querySelector("polyline").getBBox();
    return { series: svg.dataset.series, box: box(svg), line: [line.x, line.y, line.width, line.height],
             dots: [...svg.querySelectorAll("circle")].map((dot) => box(dot).width) };
  });
  const before = shown();
  document.querySelector('nav.situations a[href="#situation-2"]').click();
  await sleep(100);
  const chosen = shown();
  const situation = document.querySelector("#situation-2");
  const videos = [...situation.querySelectorAll("video")];
  for (let i = 0; i < 600 && videos.some((v) => v.readyState < 1 && !v.error); i++) await sleep(50);
  const durations = videos.map((v) => v.duration);
  const button = situation.querySelector("button.play-together");
  const buttonShown = button.getClientRects().length > 0;
  button.click();
  for (let i = 0; i < 600 && videos.some((v) => !v.ended && !v.error); i++) await sleep(50);
  const seen = videos.map((video, i) => ({
    src: video.getAttribute("src"),
    box: box(video),
    duration: durations[i],
    error: video.error && video.error.code,
    ended: video.ended,
    framesDecoded: video.getVideoPlaybackQuality().totalVideoFrames,
    caption: [...video.closest("figure").querySelector("figcaption").children].map((line) => line.innerText),
  }));
  situation.querySelector("a.close").click();
  for (let i = 0; i < 100 && videos.some((v) => v.readyState > 0); i++) await sleep(50);
  return { plots, before, chosen, buttonShown, seen, afterClose: shown(),
           releasedAfterClose: videos.map((v) => v.readyState === 0 && !v.hasAttribute("src")) };
})()"""


@needs_chromium
def test_chromium_draws_the_plot_and_plays_one_situation_side_by_side(tmp_path, chromium):
    folder, sources = tmp_path / "videos", tmp_path / "sources"
    folder.mkdir()
    sources.mkdir()
    store = VideoStore(folder, run_id="run1")
    # (iteration, episode, frames, arrived of 2, return): episode k plays seed 1000 + k every time.
    videos = [
        (1, 0, 5, 0, -40.0), (1, 1, 7, 1, -20.0), (2, 0, 4, 1, -15.0), (2, 1, 6, 1, -5.0),
        (3, 0, 8, 2, 0.0), (3, 1, 3, 1, 0.0),
    ]
    for iteration, index, frames, arrived, episode_return in videos:
        mp4 = encode(sources / f"{iteration}-{index}.mp4", frames=frames, width=64, height=48)
        store.store(
            episode=episode(mp4=mp4, frames=frames, width=64, height=48, fps=10, env_seed=1000 + index,
                            episode_return=episode_return,
                            facts={"num_agents": 2, "agents_arrived": arrived, "completion": arrived / 2}),
            stem=video_stem(env="flatland", training_iteration=iteration, evaluation_round=iteration,
                            episode_index=index, run_id="run1"),
            tag=TrainingTag(iteration, 400 * iteration), evaluation_round=iteration, episode_index=index, checkpoint=None,
        )

    browser = chromium("--window-size=1280,1600")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _COMPARISON_PROBE)

    # The plot: drawn at its size (480 x 176 and a 1px border), the line spanning the plot area
    # (x 52..460, y 24..140), a dot per iteration.
    assert [(p["series"], p["box"]["width"], p["box"]["height"], p["line"], p["dots"]) for p in seen["plots"]] == [
        ("return", 482, 178, [52, 24, 408, 116], [5, 5, 5]),
        ("completion", 482, 178, [52, 53, 408, 58], [5, 5, 5]),  # 25% .. 75%: y 111 .. 53
    ]
    # Nothing compared until chosen; then exactly the chosen situation, until closed.
    assert (seen["before"], seen["chosen"], seen["afterClose"]) == ([], ["situation-2"], [])
    assert seen["buttonShown"]
    by_file = {r["file"]: r for r in read_manifest(folder)}
    assert [video["src"] for video in seen["seen"]] == [
        "flatland-it000001-ev0001-ep001-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
        "flatland-it000003-ev0003-ep001-run1.mp4",
    ]
    boxes = [video["box"] for video in seen["seen"]]
    assert len({box["top"] for box in boxes}) == 1, boxes  # side by side, oldest first, not overlapping
    assert all(a["left"] + a["width"] < b["left"] for a, b in zip(boxes, boxes[1:])), boxes
    assert all(box["width"] > 0 and box["left"] + box["width"] <= 1280 for box in boxes), boxes
    for video in seen["seen"]:
        r = by_file[video["src"]]
        assert video["error"] is None, video
        assert video["duration"] > 0 and video["duration"] == pytest.approx(r["frames"] / r["fps"], abs=0.05), video
        # Played to the end: every frame decoded (some twice when Chromium suspended an idle player).
        assert video["ended"] and video["framesDecoded"] >= r["frames"], video
        assert video["caption"] == [
            f"iteration {r['training_iteration']}", f"{r['agents_arrived']}/2 arrived · return {r['episode_return']:.2f}",
        ]
    assert seen["releasedAfterClose"] == [True, True, True]  # closed: their players are given back


# Chooses the one situation, then scrolls its row sideways one width at a time, waiting at each
# stop until the row's videos in view have metadata, and counts the players held at once.
_ROW_SCROLL_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  location.hash = "#situation-1";
  const row = document.querySelector("#situation-1 .row");
  const videos = [...row.querySelectorAll("video")], all = [...document.querySelectorAll("video")];
  const loaded = new Set(), failed = new Set();
  let mostAtOnce = 0;
  const look = () => {
    const view = row.getBoundingClientRect();
    let waiting = 0;
    mostAtOnce = Math.max(mostAtOnce, all.filter((video) => video.readyState > 0).length);
    videos.forEach((video, i) => {
      if (video.duration > 0) loaded.add(i);
      if (video.error) failed.add(i);
      const box = video.getBoundingClientRect();
      if (box.right > view.left && box.left < view.right && video.readyState === 0 && !video.error) waiting++;
    });
    return waiting;
  };
  await sleep(100);
  for (let x = 0; x < row.scrollWidth; x += row.clientWidth) {
    row.scrollLeft = x;
    for (let i = 0; i < 200 && look() > 0; i++) await sleep(50);
  }
  await sleep(300);
  look();
  return { videos: videos.length, loaded: loaded.size, failed: failed.size, mostAtOnce };
})()"""


@needs_chromium
def test_chromium_stays_under_its_player_limit_while_scrolling_a_long_comparison(tmp_path, chromium):
    """A situation evaluated at 40 iterations: its row loads only the videos in view."""
    folder = tmp_path / "videos"
    folder.mkdir()
    encode(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    records = [record(iteration, 0, width=64, height=48, frames=3) for iteration in range(1, 41)]
    for r in records:
        os.link(tmp_path / "clip.mp4", folder / r["file"])
    (folder / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))

    browser = chromium("--window-size=800,600", "--max-web-media-player-count=12")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _ROW_SCROLL_PROBE)

    assert (seen["videos"], seen["loaded"], seen["failed"]) == (40, 40, 0), seen
    assert seen["mostAtOnce"] <= 12, seen
