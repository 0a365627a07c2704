"""Enter an image root the way a container runtime would, then exec the command: the last step of
tests/images/rootfs.py's RUN and container start, run by the host's Python inside fresh namespaces.

It is a separate, standard-library-only script because it runs after `env -i unshare ...`: no venv,
no PYTHONPATH, nothing from the host environment but what the caller passes as arguments. Mounts made
here live in the private mount namespace `unshare` created, so they disappear with its last process:
nothing can stay mounted on the host, whatever happens to the caller.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def inside(root: str, path: str) -> str:
    """`path` of the image resolved against `root`, following symlinks as the image sees them
    (absolute links point into the root, e.g. /var/run -> /run), without leaving the root."""
    resolved = root
    parts = [p for p in path.split("/") if p and p != "."]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = os.path.dirname(resolved) if resolved != root else root
            continue
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise SystemExit(f"_enter: too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = root
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved = candidate
    return resolved


def prepare_mount_target(target: str, source: str) -> None:
    if os.path.exists(target):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument(
        "--lower", help="image root: mount an overlay of it on --root (upper/work as --upper/--work)"
    )
    parser.add_argument("--upper")
    parser.add_argument("--work")
    parser.add_argument(
        "--setup", action="store_true", help="mount /proc, /dev, the binds (first process only)"
    )
    parser.add_argument("--bind", action="append", default=[], help="HOST:IMAGE[:ro]")
    parser.add_argument("--lo-up", action="store_true", help="bring up loopback (own network namespace)")
    parser.add_argument("--uid", type=int, default=0)
    parser.add_argument("--gid", type=int, default=0)
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the command's environment")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("_enter: no command")

    root = args.root
    if args.setup:
        if args.lower:
            # Docker's layering: the image stays read-only, the container writes into its own layer.
            mount(
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={args.lower},upperdir={args.upper},workdir={args.work}",
                root,
            )
        mount("-t", "proc", "proc", inside(root, "/proc"))
        # Device nodes as a container sees them (debootstrap's /dev may lack some, e.g. /dev/urandom).
        mount("--rbind", "/dev", inside(root, "/dev"))
        for spec in args.bind:
            host, image, *flags = spec.split(":")
            target = inside(root, image)
            prepare_mount_target(target, host)
            mount("--bind", host, target)
            if "ro" in flags:
                mount("-o", "remount,bind,ro", target)
        if args.lo_up:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    try:
        os.chdir(args.workdir)
    except OSError as error:
        raise SystemExit(f"_enter: workdir {args.workdir}: {error}") from error
    env = dict(item.split("=", 1) for item in args.env)
    program = command[0]
    if "/" not in program:
        for directory in env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
            if os.access(os.path.join(directory, program), os.X_OK):
                program = os.path.join(directory, program)
                break
        else:
            print(f"_enter: {command[0]}: not found on PATH={env.get('PATH')}", file=sys.stderr)
            raise SystemExit(127)
    os.execve(program, command, env)


if __name__ == "__main__":
    main()
