"""The option reference in README and --help comes from the config schema and cannot drift."""

import subprocess

from conftest import ROOT, run_eval_command
from eval_recorder.app.options_doc import option_rows, options_table


def test_readme_carries_the_generated_option_table():
    readme = (ROOT / "README.md").read_text()
    begin = readme.index("-->\n", readme.index("<!-- options:begin")) + len("-->\n")
    end = readme.index("<!-- options:end -->")
    assert readme[begin:end] == options_table()


def test_every_option_has_a_doc():
    undocumented = [key for key, _, _, doc in option_rows() if not doc]
    assert undocumented == []


def test_help_lists_every_option_with_its_doc():
    proc = subprocess.run(run_eval_command("--help"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for key, _, default, doc in option_rows():
        assert f"  {key} " in proc.stdout and f"{doc} (default: {default})" in proc.stdout, key


def test_help_offers_only_what_works():
    """Config groups without the internal schema nodes; no Ray Client (ray://) addresses."""
    proc = subprocess.run(run_eval_command("--help"), capture_output=True, text=True, timeout=60)
    groups = proc.stdout.split("== Config groups ==\n")[1].split("\n\n")[0].splitlines()
    assert groups == ["algorithm: appo, dqn, impala, ppo", "env: medium, small"]
    assert "base_" not in proc.stdout
    assert "ray://" not in proc.stdout
