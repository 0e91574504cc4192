"""The deployment files (Dockerfile, compose.yaml, deploy/): they cannot be built or run here
(no Docker, no GPU), so what can drift is checked: the image installs what `make install`
installs, with the same pins, and every aidraw command and settings file they name exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bot.cli import _parser
from bot.settings import load

ROOT = Path(__file__).resolve().parent.parent
PLANNED = {"worker": "redis"}  # `aidraw worker` comes with the Redis backend (issue 23)


def commands() -> set[str]:
    """The subcommands `aidraw --help` lists."""
    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def aidraw_commands(line: str) -> list[str]:
    """The subcommands of every `aidraw …` in a shell line (options skipped)."""
    words = shlex.split(line.replace("&&", " && "))
    found = []
    for i, word in enumerate(words):
        if word == "aidraw" or word.endswith("/aidraw"):
            rest = [w for w in words[i + 1 :] if w != "&&"]
            while rest and rest[0].startswith("-"):  # --settings PATH, -v
                rest = rest[2:] if rest[0] == "--settings" else rest[1:]
            found.append(rest[0])
    return found


def test_the_image_installs_what_make_install_installs() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    [torch] = re.findall(r"^TORCH := (torch==\S+)$", makefile, re.M)
    assert f'"{torch}"' in pyproject
    assert f'--index-url "$TORCH_INDEX_URL" {torch}' in dockerfile
    no_deps = re.findall(r"--no-deps ('[^']+')", makefile)
    assert no_deps and no_deps == re.findall(r"--no-deps ('[^']+')", dockerfile)
    # torch first, then aidraw itself, then the --no-deps packages: as the Makefile.
    order = [dockerfile.index(s) for s in (torch, "pip install .", no_deps[0])]
    assert order == sorted(order)


def test_every_aidraw_command_in_the_deployment_files_exists() -> None:
    known = commands()
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    lines = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if command is None:
            continue
        line = command[-1] if command[:2] == ["sh", "-c"] else shlex.join(command)
        for sub in aidraw_commands(line):
            if sub in PLANNED:
                assert service["profiles"] == [PLANNED[sub]], name
            else:
                assert sub in known, (name, sub)
        lines.append(line)
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [cmd] = re.findall(r'^CMD \["sh", "-c", "(.+)"\]$', dockerfile, re.M)
    assert cmd in lines  # the image's default is what compose runs
    unit = (ROOT / "deploy" / "aidraw.service").read_text(encoding="utf-8")
    [exec_start] = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    assert aidraw_commands(exec_start) == ["run"]
    assert set(aidraw_commands(cmd)) <= known


def test_the_container_settings_are_valid_and_serve_the_health_check() -> None:
    settings = load(ROOT / "deploy" / "docker-settings.toml")
    assert settings.web.serve == "always" and settings.web.host == "0.0.0.0"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"http://127.0.0.1:{settings.web.port}/healthz" in dockerfile


@pytest.mark.parametrize("volume", ["/srv/aidraw/models", "/srv/aidraw/data"])
def test_models_and_data_are_volumes_in_the_image_and_in_compose(volume: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f'"{volume}"' in dockerfile
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    for name in ("bot", "bot-cpu"):
        mounts = [m.split(":")[1] for m in compose["services"][name]["volumes"]]
        assert volume in mounts, name
