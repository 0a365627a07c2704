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
    assert "tickguard serve: error: no model at" in error and "model_card.json" in error
