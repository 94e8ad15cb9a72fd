"""The docs the CLI owns stay true: the generated ioctl table is current, the recorded
gallery files the pages include exist, and the README's command lines run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from iommu_sim.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_ioctl_table_is_current() -> None:
    r = subprocess.run([sys.executable, str(DOCS / "gen_gallery.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_included_gallery_files_exist() -> None:
    for page in DOCS.glob("*.rst"):
        for inc in re.findall(r"^\.\. (?:literalinclude|include):: (\S+)", page.read_text(),
                              re.M):
            assert (page.parent / inc).exists(), f"{page.name} includes missing {inc}"


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].split(">", 1)[0].strip()  # no redirections
            if line.startswith("python -m iommu_sim "):
                cmds.append(shlex.split(line)[3:])
    return cmds


def test_quick_start_is_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert len([ln for ln in block.splitlines() if ln.strip()]) == 2
    assert "python -m iommu_sim tour" in block


@pytest.mark.parametrize("argv", [c for c in readme_commands()
                                  if not any(a.startswith("my_") for a in c)],
                         ids=lambda a: " ".join(a)[:40])
def test_readme_command_runs(argv: list[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--no-color"] if argv[0] in ("tour", "decode") and "--json" not in argv
                else argv) == 0
    assert capsys.readouterr().out


def test_readme_plugin_script_shows_in_the_trace(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "README.md").read_text()
    (script,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class Spy" in b]
    assert len(script.splitlines()) <= 30
    f = tmp_path / "spy.py"
    f.write_text(script)
    assert main(["trace", str(f), "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "[driver] spy map 0x10000 x1" in out and "[user] dma_read" in out
