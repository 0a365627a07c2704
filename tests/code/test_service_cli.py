"""`tickguard serve` argument handling (the running server is covered in tests/integration)."""

from __future__ import annotations

from tickguard.cli import build_parser, main


def test_serve_is_registered_with_local_defaults(monkeypatch):
    monkeypatch.delenv("TICKGUARD_MODEL_DIR", raising=False)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, args.model) == ("127.0.0.1", 8000, 2, "production")


def test_serve_refuses_to_start_without_a_model(tmp_path, capsys):
    assert main(["serve", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error == (
        f"tickguard serve: error: no model to serve: no {tmp_path}/<detector>/production "
        "(run `make train`, or `tickguard models import`)\n"
    )
    assert main(["serve", "--models-dir", str(tmp_path), "--detector", "shuttle"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"tickguard serve: error: no model at {tmp_path / 'shuttle' / 'production'}")


def test_serve_takes_several_detectors_but_a_version_only_for_one(tmp_path, capsys):
    args = build_parser().parse_args(["serve", "--detector", "fraud", "--detector", "shuttle"])
    assert args.detector == ["fraud", "shuttle"]
    for name in ("fraud", "shuttle"):
        (tmp_path / name).mkdir()
    argv = ["serve", "--models-dir", str(tmp_path), "--detector", "fraud", "--detector", "shuttle"]
    assert main([*argv, "--model", "v1"]) == 1
    assert "--model v1 needs exactly one --detector (serving fraud, shuttle)" in capsys.readouterr().err


def test_the_old_single_model_layout_is_refused_with_the_fix(tmp_path, capsys):
    (tmp_path / "v1").mkdir()
    (tmp_path / "production").symlink_to("v1")
    assert main(["serve", "--models-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "is the old single-model layout" in error and f"{tmp_path / 'fraud'}" in error
