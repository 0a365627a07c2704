"""Disk size of each image we build, measured on the root filesystems tests/images/rootfs.py builds.

    python -m tests.images.sizes --label after                        # this checkout
    python -m tests.images.sizes --label before --context DIR         # e.g. `git archive <rev>` unpacked

Records `du -sx` of the whole root and of its Python environment (/opt/venv where the Dockerfile makes
one, else the interpreter's site-packages) per Dockerfile under `label` in
benchmarks/results/image_sizes.json, so the effect of a dependency change on the images is a number.
The base root is debootstrapped Debian plus Debian's python3.11, not the official image, so the roots
measure our layers faithfully and the base approximately (same packages, differently built Python).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import yaml

from tests.images import rootfs

RESULTS = rootfs.REPO / "benchmarks" / "results" / "image_sizes.json"
PYTHON_ENVIRONMENTS = ("opt/venv", "usr/local/lib/python3.11/site-packages")


def du_mib(path: Path) -> float:
    output = subprocess.run(["du", "-sxk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(output.split()[0]) / 1024, 1)


def env_example(context: Path) -> dict[str, str]:
    pairs = {}
    for line in (context / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def dockerfiles(context: Path) -> dict[str, list[str]]:
    """Dockerfile (relative to `context`) -> the compose services built from it."""
    compose_file = context / "compose" / "docker-compose.yml"
    services = yaml.safe_load(compose_file.read_text())["services"]
    found: dict[str, list[str]] = {}
    for name, spec in services.items():
        build = spec.get("build")
        if isinstance(build, dict):
            build_context = (compose_file.parent / build.get("context", ".")).resolve()
            dockerfile = (build_context / build.get("dockerfile", "Dockerfile")).relative_to(
                context.resolve()
            )
            found.setdefault(str(dockerfile), []).append(name)
    return found


def measure(context: Path) -> dict[str, dict]:
    args = {"PYTHON_IMAGE": env_example(context)["PYTHON_IMAGE"]}
    sizes = {}
    for dockerfile, services in sorted(dockerfiles(context).items()):
        image = rootfs.Builder(context / dockerfile, context, args, "+".join(services)).build()
        environment = next(image.root / p for p in PYTHON_ENVIRONMENTS if (image.root / p).is_dir())
        sizes[dockerfile] = {
            "services": services,
            "root_mib": du_mib(image.root),
            "python_env": "/" + str(environment.relative_to(image.root)),
            "python_env_mib": du_mib(environment),
        }
        rootfs.progress(f"{dockerfile}: {sizes[dockerfile]}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="key in image_sizes.json, e.g. before / after")
    parser.add_argument(
        "--context", type=Path, default=rootfs.REPO, help="checkout to build (default: this one)"
    )
    parser.add_argument("--note", default="", help="what this checkout is (commit, change)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault(
        "method",
        "du -sx of root filesystems built by tests/images/rootfs.py (debootstrap bookworm minbase + the "
        "Dockerfile interpreted); MiB",
    )
    results[args.label] = {
        "note": args.note,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        **measure(args.context),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results[args.label], indent=2))


if __name__ == "__main__":
    main()
