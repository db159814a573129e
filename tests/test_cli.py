import json
import subprocess

import pytest

from alexnet import __version__
from alexnet.cli import main


def run(python, env, *args):
    return subprocess.run(
        [python, "-m", "alexnet", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_help_and_version(python, cli_env):
    r = run(python, cli_env, "--help")
    assert r.returncode == 0
    for command in ("info", "benchmark"):
        assert command in r.stdout
    r = run(python, cli_env, "--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_info_json_subprocess(python, cli_env):
    r = run(python, cli_env, "info", "--model", "paper", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == 60_965_224
    assert info["layers"][0]["name"] == "conv1"
    r = run(python, cli_env, "info", "--model", "owt", "--json")
    assert json.loads(r.stdout)["params"] == 61_100_840


def test_info_table(capsys):
    assert (
        main(
            [
                "info",
                "--model",
                "small",
                "--num-classes",
                "10",
                "--in-channels",
                "1",
                "--input-size",
                "28",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "conv1" in out and "fc8" in out and "total" in out


def test_info_bad_input_is_a_clear_error(capsys):
    assert main(["info", "--model", "resnet"]) == 2
    err = capsys.readouterr().err
    assert "unknown model variant 'resnet'" in err and "Traceback" not in err
    assert main(["info", "--input-size", "20"]) == 2
    assert "allowed: input_size >=" in capsys.readouterr().err


def test_progress_off_a_terminal_is_a_line_per_tenth(capsys):
    from alexnet.progress import bar

    b = bar(200, "prepare train")  # stderr is captured here: not a terminal
    for _ in range(40):
        b.update(5)
    b.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 10
    assert (
        lines[0].startswith("prepare train: 20/200 img (10%)") and "200/200 img (100%)" in lines[-1]
    )
    quiet = bar(200, "x", enabled=False)
    quiet.update(200)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_prepare_size_names_native_when_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", str(tmp_path), str(tmp_path / "out"), "--size", "abc"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "'native'" in err and "'abc'" in err
    for size, said in (("1e9", "a whole number of pixels"), ("0", "at least 1 pixel"),
                       ("100000", "at most 8192 pixels")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["prepare", str(tmp_path), str(tmp_path / "out"), "--size", size])
        assert said in capsys.readouterr().err
