"""The stack: holdout replay generator, Kapacitor task loading and the local (no-Docker) pipeline."""
