"""The `tickguard data|train|evaluate` commands: arguments, output locations, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests._deps import require
from tickguard.cli import build_parser, main
from tickguard.training import config
from tickguard.training.train import default_output_dir

TICKGUARD = [sys.executable, "-m", "tickguard.cli"]


def test_fast_runs_go_to_scratch_unless_promoted(tmp_path):
    scratch = default_output_dir(config.FAST, promote=False, models_root=tmp_path)
    assert scratch.parent == tmp_path / "_scratch" and scratch.name.startswith("fast-v")
    assert default_output_dir(config.FAST, promote=True, models_root=tmp_path).parent == tmp_path
    full = default_output_dir(config.FULL, promote=False, models_root=tmp_path)
    assert full.parent == tmp_path and full.name.startswith("v")


def test_train_and_evaluate_arguments_parse():
    args = build_parser().parse_args(["train", "--fast", "--trials", "2", "--precision-target", "0.95"])
    assert args.fast and args.trials == 2 and args.precision_target == 0.95 and not args.promote
    assert args.detector == "fraud" and args.data is None and not args.from_influx
    args = build_parser().parse_args(["evaluate"])
    assert args.model == "production" and args.detector == "fraud"
    args = build_parser().parse_args(
        ["train", "--detector", "shuttle", "--from-influx", "--start=-7d", "--end", "now", "--page", "6h"]
    )
    assert (args.detector, args.from_influx, args.start, args.end, args.page) == (
        "shuttle", True, "-7d", "now", "6h",
    )  # fmt: skip
    assert build_parser().parse_args(["train", "--csv", "x.csv"]).data == Path("x.csv")


def test_inconsistent_data_options_are_one_line_errors(capsys):
    assert main(["train", "--start=-1d", "--end", "now"]) == 1
    assert "--start and --end go with --from-influx" in capsys.readouterr().err
    assert main(["train", "--from-influx", "--start=-1d"]) == 1
    assert "needs --start and --end" in capsys.readouterr().err
    assert main(["train", "--from-influx", "--csv", "x.csv", "--start=-1d", "--end", "now"]) == 1
    assert "either --csv or --from-influx" in capsys.readouterr().err
    assert main(["train", "--detector", "no-such-detector"]) == 1
    err = capsys.readouterr().err
    assert "no-such-detector" in err and "Traceback" not in err


def test_profiles_are_bounded():
    assert config.FAST.sample_rows and config.FAST.n_trials <= 5
    assert config.FULL.sample_rows is None and config.FULL.n_jobs <= 2
    assert config.FULL.with_overrides(n_trials=7, seed=None).n_trials == 7
    assert config.FULL.precision_target is None  # the detector's [threshold] target decides


def test_evaluate_unknown_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "no model at" in err and "Traceback" not in err


def test_fetch_is_a_quick_no_op_when_the_file_is_there():
    from tickguard.data.config import data_settings

    require(data_settings().csv_path.is_file(), "data/raw/creditcard.csv missing: run `make data`")
    result = subprocess.run([*TICKGUARD, "data", "fetch"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stderr and "downloading" not in result.stderr


def test_fast_model_evaluates_and_matches_its_card(fast_model_dir: Path):
    result = subprocess.run(
        [*TICKGUARD, "evaluate", str(fast_model_dir)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "matches the card: yes" in result.stdout
    assert "holdout (56962 rows, 75 anomalies)" in result.stdout
    assert "for detector fraud" in result.stdout
