"""Our Docker images as root filesystems, built and run without a Docker engine (test tooling).

There is no Docker engine where the suite runs, yet the images are what users start first. So the
tests reproduce each image: a debootstrapped Debian of the image's release stands in for the official
python:3.11-slim-bookworm (scripts/rootfs-base.sh says what differs), and a small interpreter executes
the Dockerfile itself on top of it: the apt packages, the pip line, the user, the healthcheck and the
command all come from the Dockerfile and from `docker compose config`, so a broken Dockerfile breaks
the tests. RUN steps and containers run under chroot in fresh mount and PID namespaces (and, for
services that listen, a network namespace of their own): every mount and process dies with them.

Cache: ${TICKGUARD_CACHE:-~/.cache/tickguard}/rootfs/ holds the base (keyed on release, package list
and script) and one root per build stage, keyed on the stage's instructions, build args, the files its
COPYs read and the stages it starts from or copies out of; identical stages (api's and udf's build
stage today) are built once. pip's download and wheel cache is bind-mounted into RUN steps, the one
deviation from the Dockerfiles (they set PIP_NO_CACHE_DIR=1 to keep images small; the cache lives
outside the root, so the roots stay the same): it spares the downloads when src changes. Where the
package index answers without cache headers (the proxy of this project's build machine does) pip stores
nothing and every rebuild downloads again; there the stages shared between images and the cheap copies
keep a rebuild after a src change near two minutes for all images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.images._enter import inside

REPO = Path(__file__).resolve().parents[2]
BASE_SCRIPT = REPO / "scripts" / "rootfs-base.sh"
ENTER = Path(__file__).with_name("_enter.py")
COMPOSE_FILE = REPO / "compose" / "docker-compose.yml"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Where pip's cache is bind-mounted during RUN (removed again afterwards).
PIP_CACHE_MOUNT = "/var/cache/tickguard-pip"
# What the official python:3.11-slim-bookworm image's config sets (docker image inspect).
PYTHON_SLIM_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
PYTHON_SLIM = re.compile(r"python:3\.11(?:\.\d+)?-slim-(?P<release>bookworm)")
# Docker passes these from the host to builds without an ARG line; so do we.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class ImageError(Exception):
    """A Dockerfile the interpreter cannot honour, or a build/run step that failed."""


def cache_dir() -> Path:
    root = Path(os.environ.get("TICKGUARD_CACHE", Path.home() / ".cache" / "tickguard")) / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def progress(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time per cache (two pytest runs must not write the same root)."""
    with open(cache_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the base root ----------------------------------------------------------------------------------


def base_root(release: str) -> Path:
    """The debootstrapped stand-in for python:3.11-slim-<release>, built once per script version."""
    key = digest(release, BASE_SCRIPT.read_bytes().decode())
    path = cache_dir() / f"base-{release}-{key}"
    if not path.is_dir():
        progress(f"base {release}: debootstrap (a few minutes, once)")
        started = time.monotonic()
        result = subprocess.run(["bash", str(BASE_SCRIPT), str(path), release], text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"scripts/rootfs-base.sh failed for {release} (output above)")
        progress(f"base {release}: ready in {time.monotonic() - started:.0f} s")
        for older in cache_dir().glob(f"base-{release}-*"):  # earlier versions of the script
            if older != path:
                shutil.rmtree(older, ignore_errors=True)
    return path


# ---- Dockerfile parsing -------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    text: str
    line: int

    def where(self, dockerfile: Path) -> str:
        return (
            f"{dockerfile.relative_to(REPO) if dockerfile.is_relative_to(REPO) else dockerfile}:{self.line}"
        )


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comment lines (also inside them) dropped."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
    if pending:
        raise ImageError(f"{path}:{start}: the file ends inside a continued line")
    return instructions


_VARIABLE = re.compile(
    r"\\\$|\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Docker's substitution in ENV/ARG/FROM/COPY/WORKDIR/USER: $X, ${X}, ${X:-word}, ${X:+word}."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group("braced") or match.group("bare")
        value = variables.get(name, "")
        if match.group("op") == "-":
            return value or expand(match.group("word"), variables)
        if match.group("op") == "+":
            return expand(match.group("word"), variables) if value else ""
        return value

    return _VARIABLE.sub(replace, text)


def exec_form(text: str) -> list[str]:
    """CMD/RUN/HEALTHCHECK argument: JSON array (exec form) or a string for /bin/sh -c."""
    if text.startswith("["):
        try:
            argv = json.loads(text)
        except json.JSONDecodeError as error:
            raise ImageError(f"malformed exec form {text!r}: {error}") from error
        if not (isinstance(argv, list) and all(isinstance(item, str) for item in argv)):
            raise ImageError(f"exec form must be a JSON array of strings: {text!r}")
        return argv
    return ["/bin/sh", "-c", text]


def seconds(value: str) -> float:
    """A Docker duration (30s, 1m30s, 500ms) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ImageError(f"not a duration: {value!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


@dataclass
class Healthcheck:
    test: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    start_period: float = 0.0
    retries: int = 3

    @classmethod
    def from_dockerfile(cls, text: str) -> Healthcheck | None:
        words = text.split(" ")
        options: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            options[name] = value
        rest = " ".join(words).strip()
        if rest.upper() == "NONE":
            return None
        keyword, _, command = rest.partition(" ")
        if keyword.upper() != "CMD":
            raise ImageError(f"HEALTHCHECK needs CMD or NONE, got {rest!r}")
        check = cls(exec_form(command.strip()))
        check.apply(options)
        return check

    @classmethod
    def from_compose(cls, spec: Mapping[str, object], fallback: Healthcheck | None) -> Healthcheck | None:
        test = spec.get("test")
        if spec.get("disable") or test == ["NONE"]:
            return None
        if isinstance(test, str):
            argv = ["/bin/sh", "-c", test]
        elif isinstance(test, list) and test[:1] == ["CMD"]:
            argv = list(test[1:])
        elif isinstance(test, list) and test[:1] == ["CMD-SHELL"]:
            argv = ["/bin/sh", "-c", test[1]]
        elif fallback is not None:
            argv = fallback.test
        else:
            return None
        check = cls(argv)
        if fallback is not None:
            check.interval, check.timeout = fallback.interval, fallback.timeout
            check.start_period, check.retries = fallback.start_period, fallback.retries
        check.apply({k.replace("_", "-"): str(v) for k, v in spec.items() if k != "test"})
        return check

    def apply(self, options: Mapping[str, str]) -> None:
        for name, value in options.items():
            if name == "interval":
                self.interval = seconds(value)
            elif name == "timeout":
                self.timeout = seconds(value)
            elif name == "start-period":
                self.start_period = seconds(value)
            elif name == "retries":
                self.retries = int(value)
            elif name not in {"start-interval"}:
                raise ImageError(f"unknown healthcheck option --{name}")


@dataclass
class ImageConfig:
    """What `docker image inspect` would call the image's Config."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    cmd: list[str] = field(default_factory=list)
    healthcheck: Healthcheck | None = None
    exposed: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = self.__dict__.copy()
        data["healthcheck"] = self.healthcheck.__dict__ if self.healthcheck else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> ImageConfig:
        check = data.pop("healthcheck")
        return cls(**data, healthcheck=Healthcheck(**check) if check else None)


@dataclass
class Stage:
    index: int
    name: str
    source: str  # image reference or earlier stage name, after ARG substitution
    instructions: list[Instruction]
    args: dict[str, str]  # ARG values visible to this stage's FROM line


@dataclass
class Image:
    """A built image: its root filesystem (never written to by containers) and its config."""

    name: str
    root: Path
    config: ImageConfig


# ---- .dockerignore and build context ------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore match (Go filepath.Match plus **): `*` stops at `/`, `**` does not."""
    pattern = pattern.strip().strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "(?:/.*)?")  # a matched directory excludes everything under it


class BuildContext:
    def __init__(self, root: Path) -> None:
        self.root = root
        ignore_file = root / ".dockerignore"
        lines = ignore_file.read_text().splitlines() if ignore_file.exists() else []
        patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if any(p.startswith("!") for p in patterns):
            raise ImageError(
                ".dockerignore exceptions (!pattern) are not supported by tests/images/rootfs.py"
            )
        self.ignored = [_ignore_regex(p) for p in patterns]

    def is_ignored(self, relative: str) -> bool:
        return any(regex.fullmatch(relative) for regex in self.ignored)

    def files(self, source: str) -> list[tuple[str, Path]]:
        """(path relative to `source`, host path) of every file and link COPY would send, sorted."""
        top = (self.root / source).resolve()
        if not top.is_relative_to(self.root) or self.is_ignored(str(top.relative_to(self.root))):
            raise ImageError(f"COPY source {source!r} is outside the build context or in .dockerignore")
        if not top.exists():
            raise ImageError(f"COPY source {source!r} does not exist in {self.root}")
        if not top.is_dir():
            return [(top.name, top)]
        found = []
        for directory, subdirs, filenames in os.walk(top):
            base = Path(directory)
            subdirs[:] = sorted(
                d for d in subdirs if not self.is_ignored(str((base / d).relative_to(self.root)))
            )
            for name in sorted(filenames):
                path = base / name
                if not self.is_ignored(str(path.relative_to(self.root))):
                    found.append((str(path.relative_to(top)), path))
        return found

    def fingerprint(self, source: str) -> str:
        hasher = hashlib.sha256()
        for relative, path in self.files(source):
            hasher.update(relative.encode() + b"\0" + oct(path.lstat().st_mode).encode() + b"\0")
            hasher.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        return hasher.hexdigest()


# ---- running things inside a root ---------------------------------------------------------------------


def resolve_user(root: Path, user: str) -> tuple[int, int, str]:
    """USER (name, uid, name:group or uid:gid) -> uid, gid, HOME, looked up in the image's files."""
    name, _, group = (user or "root").partition(":")
    passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line]
    entry = next((row for row in passwd if name in (row[0], row[2])), None)
    if entry is None and not name.isdigit():
        raise ImageError(f"USER {user}: no user {name!r} in the image's /etc/passwd")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    if group:
        groups = [line.split(":") for line in (root / "etc/group").read_text().splitlines() if line]
        found = next((row for row in groups if group in (row[0], row[2])), None)
        if found is None and not group.isdigit():
            raise ImageError(f"USER {user}: no group {group!r} in the image's /etc/group")
        gid = int(found[2]) if found else int(group)
    return uid, gid, home


def enter_command(
    root: Path,
    argv: list[str],
    *,
    env: Mapping[str, str],
    workdir: str,
    uid: int,
    gid: int,
    setup: bool,
    binds: list[str] = (),
    lower: Path | None = None,
    layer: Path | None = None,
    lo_up: bool = False,
) -> list[str]:
    command = [sys.executable, "-I", str(ENTER), "--root", str(root), "--uid", str(uid), "--gid", str(gid)]
    command += ["--workdir", workdir]
    if setup:
        command.append("--setup")
        if lower is not None and layer is not None:
            command += ["--lower", str(lower), "--upper", str(layer / "upper"), "--work", str(layer / "work")]
        for bind in binds:
            command += ["--bind", bind]
        if lo_up:
            command.append("--lo-up")
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    return [*command, "--", *argv]


def namespaced(command: list[str], *, own_network: bool) -> list[str]:
    """A clean environment (host PIP_* and the like must not leak in) and fresh mount/PID namespaces."""
    flags = ["--mount", "--pid", "--fork", "--propagation", "private"] + (["--net"] if own_network else [])
    return ["env", "-i", f"PATH={HOST_PATH}", "unshare", *flags, "--", *command]


def with_home(env: Mapping[str, str], home: str) -> dict[str, str]:
    result = dict(env)
    result.setdefault("PATH", PYTHON_SLIM_ENV["PATH"])
    result.setdefault("HOME", home)
    return result


@contextlib.contextmanager
def host_network_files(root: Path) -> Iterator[None]:
    """During RUN: the host's resolver config, hosts and CA bundle (pip must trust what this host's
    network presents), put back afterwards so the image keeps its own files (Docker mounts them too)."""
    swaps = {
        "etc/resolv.conf": Path("/etc/resolv.conf"),
        "etc/hosts": Path("/etc/hosts"),
        "etc/ssl/certs/ca-certificates.crt": Path("/etc/ssl/certs/ca-certificates.crt"),
    }
    saved: dict[Path, bytes | None] = {}
    for image_path, host in swaps.items():
        target = root / image_path
        if target.is_symlink() or not host.exists():
            continue
        saved[target] = target.read_bytes() if target.exists() else None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(host.read_bytes())
    try:
        yield
    finally:
        for target, content in saved.items():
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(content)


# ---- building -----------------------------------------------------------------------------------------


class Builder:
    """Interprets one Dockerfile: ARG, FROM ... AS, ENV, WORKDIR, COPY [--from] [--chown], RUN, USER,
    EXPOSE, HEALTHCHECK, CMD, LABEL. Anything else is refused with its line, never skipped."""

    SUPPORTED = {
        "ARG",
        "FROM",
        "ENV",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "CMD",
        "LABEL",
    }

    def __init__(self, dockerfile: Path, context: Path, build_args: Mapping[str, str], name: str) -> None:
        self.dockerfile = dockerfile
        self.context = BuildContext(context)
        self.build_args = dict(build_args)
        self.name = name
        self.stages = self._split_stages(parse_dockerfile(dockerfile))
        self.keys: dict[int, str] = {}

    def _split_stages(self, instructions: list[Instruction]) -> list[Stage]:
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        for instruction in instructions:
            if instruction.keyword not in self.SUPPORTED:
                raise ImageError(
                    f"{instruction.where(self.dockerfile)}: {instruction.keyword} is not supported by "
                    "tests/images/rootfs.py (extend the interpreter rather than skipping it)"
                )
            if instruction.keyword == "FROM":
                words = instruction.text.split()
                source = expand(words[0], global_args)
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
                if len(words) not in (1, 3):
                    raise ImageError(f"{instruction.where(self.dockerfile)}: FROM IMAGE [AS NAME] expected")
                stages.append(Stage(len(stages), name, source, [], dict(global_args)))
            elif not stages:
                if instruction.keyword != "ARG":
                    raise ImageError(f"{instruction.where(self.dockerfile)}: only ARG may come before FROM")
                key, _, default = instruction.text.partition("=")
                global_args[key] = self.build_args.get(key, default)
            else:
                stages[-1].instructions.append(instruction)
        if not stages:
            raise ImageError(f"{self.dockerfile}: no FROM")
        return stages

    def _stage_named(self, name: str, before: int) -> Stage | None:
        return next((s for s in self.stages[:before] if name in (s.name, str(s.index))), None)

    def _base_release(self, stage: Stage) -> str:
        match = PYTHON_SLIM.fullmatch(stage.source)
        if not match:
            raise ImageError(
                f"{self.dockerfile}: FROM {stage.source!r}: only python:3.11-slim-<release> images have a "
                "root filesystem recipe (compose passes PYTHON_IMAGE=python:3.11-slim-bookworm from .env)"
            )
        return match.group("release")

    def key(self, stage: Stage) -> str:
        """The stage's cache key: its start, its instructions, build args and every input it reads."""
        if stage.index in self.keys:
            return self.keys[stage.index]
        parent = self._stage_named(stage.source, stage.index)
        start = self.key(parent) if parent else ["base", self._base_release(stage), BASE_SCRIPT.read_text()]
        inputs = []
        for instruction in stage.instructions:
            inputs.append([instruction.keyword, instruction.text])
            if instruction.keyword == "COPY":
                flags, sources, _ = self._copy_parts(instruction, {**self.build_args, **stage.args})
                if "from" in flags:
                    source_stage = self._stage_named(flags["from"], stage.index)
                    if source_stage is None:
                        raise ImageError(
                            f"{instruction.where(self.dockerfile)}: no earlier stage {flags['from']!r}"
                        )
                    inputs.append(self.key(source_stage))
                else:
                    inputs.extend(self.context.fingerprint(source) for source in sources)
        self.keys[stage.index] = digest(start, stage.args, self.build_args, inputs)
        return self.keys[stage.index]

    def _copy_parts(self, instruction: Instruction, variables: Mapping[str, str]):
        text = instruction.text
        words = json.loads(text) if text.startswith("[") else shlex.split(text)
        flags: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = expand(value, variables)
        unknown = set(flags) - {"from", "chown"}
        if unknown or len(words) < 2:
            raise ImageError(
                f"{instruction.where(self.dockerfile)}: COPY [--from=S] [--chown=U] SRC... DEST expected"
            )
        words = [expand(word, variables) for word in words]
        return flags, words[:-1], words[-1]

    def build(self) -> Image:
        final = self.stages[-1]
        with cache_lock():
            root, config = self._build_stage(final)
            self._prune()
        return Image(self.name, root, config)

    def _stage_dir(self, stage: Stage) -> Path:
        return cache_dir() / "stages" / self.key(stage)

    def _build_stage(self, stage: Stage) -> tuple[Path, ImageConfig]:
        directory = self._stage_dir(stage)
        config_file = directory / "config.json"
        if config_file.exists():
            progress(f"{self.name}: stage {stage.name} cached ({directory.name})")
            os.utime(directory)
            return directory / "root", ImageConfig.from_json(json.loads(config_file.read_text()))
        parent = self._stage_named(stage.source, stage.index)
        if parent:
            parent_root, parent_config = self._build_stage(parent)
            config = ImageConfig.from_json(json.loads(json.dumps(parent_config.to_json())))
        else:
            parent_root, config = base_root(self._base_release(stage)), ImageConfig(env=dict(PYTHON_SLIM_ENV))
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        root = partial / "root"
        started = time.monotonic()
        progress(f"{self.name}: stage {stage.name}: copying {parent_root.parent.name if parent else 'base'}")
        subprocess.run(["cp", "-a", "--reflink=auto", str(parent_root), str(root)], check=True)
        args: dict[str, str] = {}
        for instruction in stage.instructions:
            self._apply(instruction, stage, root, config, args)
        (partial / "config.json").write_text(json.dumps(config.to_json(), indent=1))
        (partial / "meta.json").write_text(
            json.dumps({"dockerfile": str(self.dockerfile), "stage": stage.name, "image": self.name})
        )
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
        progress(f"{self.name}: stage {stage.name} built in {time.monotonic() - started:.0f} s")
        return directory / "root", config

    def _apply(
        self, instruction: Instruction, stage: Stage, root: Path, config: ImageConfig, args: dict
    ) -> None:
        where = instruction.where(self.dockerfile)
        variables = {**args, **config.env}
        keyword, text = instruction.keyword, instruction.text
        if keyword == "ARG":
            key, has_default, default = text.partition("=")
            if key in self.build_args:
                args[key] = self.build_args[key]
            elif key in stage.args and not has_default:
                args[key] = stage.args[key]
            else:
                args[key] = expand(default, variables)
        elif keyword == "ENV":
            words = shlex.split(text)
            if words and "=" not in words[0]:
                config.env[words[0]] = expand(text.partition(" ")[2].strip(), variables)
            else:
                for word in words:
                    key, sep, value = word.partition("=")
                    if not sep:
                        raise ImageError(f"{where}: ENV {word!r} is not KEY=VALUE")
                    config.env[key] = expand(value, {**args, **config.env})
        elif keyword == "WORKDIR":
            config.workdir = os.path.normpath(os.path.join(config.workdir, expand(text, variables)))
            (root / config.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "USER":
            config.user = expand(text, variables)
        elif keyword == "EXPOSE":
            config.exposed.extend(expand(text, variables).split())
        elif keyword == "CMD":
            config.cmd = exec_form(text)
        elif keyword == "HEALTHCHECK":
            config.healthcheck = Healthcheck.from_dockerfile(text)
        elif keyword == "LABEL":
            pass  # metadata only
        elif keyword == "COPY":
            self._copy(instruction, stage, root, config, variables)
        elif keyword == "RUN":
            self._run(instruction, root, config, args)
        else:  # pragma: no cover - SUPPORTED is checked when parsing
            raise ImageError(f"{where}: {keyword}")

    def _copy(
        self, instruction: Instruction, stage: Stage, root: Path, config: ImageConfig, variables
    ) -> None:
        flags, sources, dest = self._copy_parts(instruction, variables)
        dest_path = dest if dest.startswith("/") else os.path.join(config.workdir, dest)
        into_directory = dest.endswith("/") or len(sources) > 1 or dest in {".", "./"}
        uid = gid = None
        if "chown" in flags:
            uid, gid, _ = resolve_user(root, flags["chown"])
        progress(f"{self.name}: stage {stage.name}: COPY {instruction.text}")
        target_root = root / dest_path.lstrip("/")
        if "from" in flags:
            source_root, _ = self._build_stage(self._stage_named(flags["from"], stage.index))
            for source in sources:
                origin = source_root / source.lstrip("/")
                if not origin.exists():
                    raise ImageError(
                        f"{instruction.where(self.dockerfile)}: {source} not in stage {flags['from']}"
                    )
                target = target_root / origin.name if into_directory and not origin.is_dir() else target_root
                target.parent.mkdir(parents=True, exist_ok=True)
                if origin.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    subprocess.run(["cp", "-a", "--reflink=auto", f"{origin}/.", str(target)], check=True)
                else:
                    subprocess.run(["cp", "-a", "--reflink=auto", str(origin), str(target)], check=True)
                if uid is not None:
                    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(target)], check=True)
            return
        for source in sources:
            is_dir = (self.context.root / source).is_dir()
            for relative, host in self.context.files(source):
                if is_dir:
                    target = target_root / relative
                elif into_directory:
                    target = target_root / host.name
                else:
                    target = target_root
                target.parent.mkdir(parents=True, exist_ok=True)
                if host.is_symlink():
                    target.unlink(missing_ok=True)
                    target.symlink_to(os.readlink(host))
                else:
                    shutil.copy2(host, target)
                os.lchown(target, uid or 0, gid or 0)

    def _run(
        self, instruction: Instruction, root: Path, config: ImageConfig, args: Mapping[str, str]
    ) -> None:
        progress(f"{self.name}: RUN {instruction.text[:100]}")
        uid, gid, home = resolve_user(root, config.user)
        env = {k: v for k, v in os.environ.items() if k in PROXY_VARIABLES}
        env.update(args)
        env.update(config.env)
        env = with_home(env, home)
        # The one deviation (see the module docstring): pip's cache, outside the root.
        env.pop("PIP_NO_CACHE_DIR", None)
        env["PIP_CACHE_DIR"] = PIP_CACHE_MOUNT
        pip_cache = cache_dir() / "pip"
        pip_cache.mkdir(exist_ok=True)
        command = enter_command(
            root,
            exec_form(instruction.text),
            env=env,
            workdir=config.workdir,
            uid=uid,
            gid=gid,
            setup=True,
            binds=[f"{pip_cache}:{PIP_CACHE_MOUNT}"],
        )
        started = time.monotonic()
        with host_network_files(root):
            result = subprocess.run(namespaced(command, own_network=False), check=False)
        (root / PIP_CACHE_MOUNT.lstrip("/")).rmdir()
        if result.returncode != 0:
            raise ImageError(
                f"{instruction.where(self.dockerfile)}: RUN exited with {result.returncode}: {instruction.text}"
            )
        progress(f"{self.name}: RUN done in {time.monotonic() - started:.0f} s")

    def _prune(self) -> None:
        """Drop cached stages of this Dockerfile that its current stages no longer use."""
        current = {self.key(stage) for stage in self.stages}
        # Builds run under the cache lock, which we hold: any half-built stage left is from a killed run.
        for partial in (cache_dir() / "stages").glob("*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        for meta in (cache_dir() / "stages").glob("*/meta.json"):
            data = json.loads(meta.read_text())
            stale = data["dockerfile"] == str(self.dockerfile) and meta.parent.name not in current
            # Each src change leaves ~1 GB of stages behind. A stage another Dockerfile shares, or that a
            # concurrent session is running a container of, was used within minutes: keep those.
            if stale and time.time() - meta.parent.stat().st_mtime > 600:
                shutil.rmtree(meta.parent, ignore_errors=True)


# ---- compose ------------------------------------------------------------------------------------------


def compose_config(env: Mapping[str, str]) -> dict:
    """`docker compose config` for an env file holding `env`: services with every variable filled in."""
    from tests.code.test_compose import compose_command  # the suite's one way to find compose

    command = compose_command()
    if command is None:
        raise ImageError("neither `docker compose` nor `docker-compose` installed (make sysdeps)")
    with tempfile.NamedTemporaryFile("w", suffix=".env") as env_file:
        env_file.write("".join(f"{key}={value}\n" for key, value in env.items()))
        env_file.flush()
        result = subprocess.run(
            [*command, "--env-file", env_file.name, "-f", str(COMPOSE_FILE), "config"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=120,
        )
    if result.returncode != 0:
        raise ImageError(f"compose config failed: {result.stderr.strip()}")
    return yaml.safe_load(result.stdout)


def build_service_image(service: str, spec: Mapping) -> Image:
    build = spec.get("build")
    if not isinstance(build, Mapping):
        raise ImageError(f"compose service {service} has no build section: it runs an official image")
    context = Path(build.get("context", "."))
    context = context if context.is_absolute() else (COMPOSE_FILE.parent / context).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    if not dockerfile.is_file():
        raise ImageError(f"compose service {service}: Dockerfile {dockerfile} does not exist")
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(item.split("=", 1) for item in args)
    progress(f"{service}: image from {dockerfile} ({args})")
    return Builder(dockerfile, context, {k: str(v) for k, v in args.items()}, service).build()


@dataclass
class Mount:
    host: Path
    target: str
    read_only: bool
    # A fresh named volume: Docker gives it the owner and mode of the image's directory at `target`.
    named_volume: bool = False


def service_mounts(spec: Mapping, named: Mapping[str, Path]) -> list[Mount]:
    """compose volumes (short or long syntax): binds as given, named volumes from `named`."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = "ro" in (mode[0].split(",") if mode else [])
        else:
            source, target, read_only = volume["source"], volume["target"], bool(volume.get("read_only"))
        if source.startswith(("/", ".")):
            mounts.append(Mount(Path(source), target, read_only))
        elif source in named:
            mounts.append(Mount(named[source], target, read_only, named_volume=True))
        else:
            raise ImageError(f"named volume {source!r}: the test must provide a directory for it")
    return mounts


# ---- containers ---------------------------------------------------------------------------------------


class Container:
    """One running container of `image`: an overlay layer over the image root, its own mount and PID
    namespaces (and network namespace unless `host_network`), PID 1 = the command, as the image's USER."""

    def __init__(
        self,
        image: Image,
        *,
        command: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        mounts: list[Mount] = (),
        host_network: bool = False,
        healthcheck: Healthcheck | None = None,
    ) -> None:
        self.image = image
        self.command = command or image.config.cmd
        self.user = user if user is not None else image.config.user
        self.uid, self.gid, home = resolve_user(image.root, self.user)
        self.env = with_home({**image.config.env, **(env or {})}, home)
        self.mounts = list(mounts)
        self.host_network = host_network
        self.healthcheck = healthcheck or image.config.healthcheck
        self.layer: Path | None = None
        self.process: subprocess.Popen | None = None
        self.log_text = ""

    @property
    def merged(self) -> Path:
        assert self.layer is not None
        return self.layer / "merged"

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        (cache_dir() / "containers").mkdir(exist_ok=True)
        os.utime(self.image.root.parent)  # in use: the stage pruning of other builds leaves it alone
        self.layer = Path(tempfile.mkdtemp(prefix=f"{self.image.name}-", dir=cache_dir() / "containers"))
        for part in ("upper", "work", "merged"):
            (self.layer / part).mkdir()
        for mount in self.mounts:
            in_image = Path(inside(str(self.image.root), mount.target))
            if mount.named_volume and in_image.is_dir():
                status = in_image.stat()
                os.chown(mount.host, status.st_uid, status.st_gid)
                os.chmod(mount.host, status.st_mode & 0o7777)
        command = enter_command(
            self.merged,
            self.command,
            env=self.env,
            workdir=self.image.config.workdir,
            uid=self.uid,
            gid=self.gid,
            setup=True,
            binds=[f"{m.host}:{m.target}{':ro' if m.read_only else ''}" for m in self.mounts],
            lower=self.image.root,
            layer=self.layer,
            lo_up=not self.host_network,
        )
        progress(f"{self.image.name}: start {shlex.join(self.command)} as {self.user or 'root'} ({self.uid})")
        self.log = open(self.layer / "container.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            namespaced(command, own_network=not self.host_network), stdout=self.log, stderr=subprocess.STDOUT
        )

    def pid1(self) -> int:
        """Host PID of the container's PID 1 (the child `unshare --fork` started)."""
        assert self.process is not None
        deadline = time.monotonic() + 10
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                text = children.read_text().split()
                if text:
                    return int(text[0])
            if self.process.poll() is not None:
                raise ImageError(f"{self.image.name} exited with {self.process.returncode}:\n{self.logs()}")
            time.sleep(0.05)
        raise ImageError(f"{self.image.name}: no PID 1 after 10 s")

    def logs(self) -> str:
        """The container's output: its start (where a failed import or model load shows) and its end."""
        path = self.layer / "container.log" if self.layer else None
        if path and path.exists():
            self.log_text = path.read_text(errors="replace")
        if len(self.log_text) <= 6000:
            return self.log_text
        return f"{self.log_text[:3000]}\n[...]\n{self.log_text[-3000:]}"

    def exec(
        self, argv: list[str], *, timeout: float, user: str | None = None
    ) -> subprocess.CompletedProcess:
        """`docker exec`: `argv` in the container's namespaces and root, as its user, with its env."""
        uid, gid = (self.uid, self.gid) if user is None else resolve_user(self.image.root, user)[:2]
        command = enter_command(
            self.merged, argv, env=self.env, workdir=self.image.config.workdir, uid=uid, gid=gid, setup=False
        )
        nsenter = ["nsenter", "--target", str(self.pid1()), "--mount", "--pid"]
        nsenter += [] if self.host_network else ["--net"]
        return subprocess.run(
            ["env", "-i", f"PATH={HOST_PATH}", *nsenter, "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def host_command(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        """A host program (e.g. curl) in the container's network namespace: its loopback, its ports."""
        nsenter = ["nsenter", "--target", str(self.pid1()), "--net"]
        return subprocess.run(
            [*nsenter, "--", *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def wait_healthy(self) -> float:
        """Docker's schedule: a check every `interval`, failures in `start_period` don't count, then
        `retries` failures in a row make it unhealthy. Returns the seconds until healthy."""
        check = self.healthcheck
        if check is None:
            raise ImageError(f"{self.image.name}: no HEALTHCHECK in the image or compose")
        started = time.monotonic()
        failures = 0
        last = ""
        while True:
            time.sleep(
                min(check.interval, 2.0)
                if time.monotonic() - started < check.start_period
                else check.interval
            )
            if self.process is not None and self.process.poll() is not None:
                raise ImageError(f"{self.image.name} exited with {self.process.returncode}:\n{self.logs()}")
            try:
                result = self.exec(check.test, timeout=check.timeout)
                ok, last = result.returncode == 0, (result.stdout + result.stderr)[-1500:]
            except subprocess.TimeoutExpired:
                ok, last = False, f"healthcheck timed out after {check.timeout} s"
            if ok:
                elapsed = time.monotonic() - started
                progress(f"{self.image.name}: healthy after {elapsed:.1f} s")
                return elapsed
            if time.monotonic() - started >= check.start_period:
                failures += 1
            if failures >= check.retries:
                raise ImageError(
                    f"{self.image.name}: unhealthy ({failures} failed checks); last check said:\n{last}\n"
                    f"container log:\n{self.logs()}"
                )

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ImageError(f"{self.image.name} still running after {timeout} s:\n{self.logs()}") from error

    def stop(self) -> None:
        """SIGTERM to PID 1, SIGKILL after 10 s (as `docker stop`); the namespaces and their mounts go
        with it; the container layer is deleted."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ImageError, ProcessLookupError):
                os.kill(self.pid1(), signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ImageError, ProcessLookupError):
                    os.kill(self.pid1(), signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.layer is not None:
            self.logs()
            self.log.close()
            shutil.rmtree(self.layer, ignore_errors=True)
            self.layer = None
