"""The docs the CLI owns stay true: the generated ioctl table is current, the recorded
gallery files the pages include exist, and the README's command lines run."""

from __future__ import annotations

import os
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
    assert capsys.readouterr().out or any(tmp_path.iterdir())  # printed, or wrote -o FILE


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


def _readme_block(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    rest = text.split(after, 1)[1]
    block: str = re.findall(rf"```{lang}\n(.*?)```", rest, re.S)[0]
    return block


def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    code = _readme_block("python", "## Use it from Python")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "F_TRANSLATION"


def test_readme_states_the_kernel_followed() -> None:
    from iommu_sim import KERNEL

    assert KERNEL == "7.3"
    assert f"The kernel followed is Linux {KERNEL}" in (ROOT / "README.md").read_text()


def test_readme_tour_excerpt_is_the_tours_output(capsys: pytest.CaptureFixture[str]) -> None:
    excerpt = _readme_block("text", "This is the end of the SMMUv3 nesting step").splitlines()
    assert len(excerpt) == 20
    assert main(["tour", "--vendor", "smmu", "--step", "nested", "--no-color"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index(excerpt[0])
    assert out[start:start + 20] == excerpt  # twenty consecutive lines of the real output


def test_api_page_examples_run(tmp_path: Path) -> None:
    text = (DOCS / "api.rst").read_text()
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text, re.M)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        code = "\n".join(ln[3:] for ln in block.splitlines())
        script = tmp_path / f"api_{i}.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           timeout=120, check=False)
        assert r.returncode == 0, f"api.rst example {i}:\n{code}\n{r.stderr}"


def test_reference_pages_are_in_the_visible_toctree() -> None:
    index = (DOCS / "index.rst").read_text()
    visible = [b for b in index.split(".. toctree::")[1:] if ":hidden:" not in b]
    pages = {ln.strip() for b in visible for ln in b.splitlines() if ln.startswith("   ")
             and not ln.strip().startswith(":")}
    assert {"api", "vfio_compat", "modules", "uapi", "hookspec"} <= pages


def test_docs_are_nitpicky() -> None:
    conf = (DOCS / "conf.py").read_text()
    assert re.search(r"^nitpicky = True$", conf, re.M)


def test_api_errno_table_is_true() -> None:
    """Each errno the API page's table promises for a call is what the call returns."""
    import errno

    from iommu_sim import Machine

    text = (DOCS / "api.rst").read_text()
    table = text.split("What each call can fail with", 1)[1].split("A DMA the IOMMU", 1)[0]
    rows: dict[str, str] = {}
    for row in re.split(r"\n   \* - ", table)[1:]:
        calls, _, errs = row.partition("\n     - ")
        for call in re.findall(r"``(\w+)``", calls):
            rows[call] = rows.get(call, "") + errs

    m = Machine.default()
    fd = m.open("/dev/iommu")
    va = m.mmap(0x2000)
    mfd = m.memfd_create("t")
    child = m.fork()
    child.exit()
    cases = [
        ("open", lambda: m.open("/dev/nope"), "ENOENT"), ("open", lambda: m.open(5), "EFAULT"),
        ("close", lambda: m.close(99), "EBADF"), ("read", lambda: m.read(99, 1), "EBADF"),
        ("ioctl", lambda: m.ioctl(fd, 0x1234), "ENOTTY"),
        ("ioctl", lambda: m.ioctl(fd, 0x3b80, object()), "EFAULT"),
        ("read", lambda: m.read(fd, -1), "EINVAL"), ("write", lambda: m.write(fd, object()),
                                                      "EFAULT"),
        ("mmap", lambda: m.mmap(0), "EINVAL"), ("mmap", lambda: m.mmap(1 << 60), "ENOMEM"),
        ("mmap", lambda: m.mmap(0x1000, addr=va), "EEXIST"),
        ("mmap", lambda: m.mmap(0x1000, fd), "ENXIO"),
        ("munmap", lambda: m.munmap(va + 1, 0x1000), "EINVAL"),
        ("mem_read", lambda: m.mem_read(0x1000, 4), "EFAULT"),
        ("mem_read", lambda: m.mem_read(va, -1), "EINVAL"),
        ("dma_read", lambda: m.dma_read("x", 0, 1), "ENODEV"),
        ("dma_read", lambda: m.dma_read("0000:00:01.0", 0, 1, -1), "EINVAL"),
        ("vfio_cdev", lambda: m.vfio_cdev("x"), "ENODEV"),
        ("device", lambda: m.device("x"), "ENODEV"),
        ("memfd_create", lambda: m.memfd_create(5), "EFAULT"),  # type: ignore[arg-type]
        ("ftruncate", lambda: m.ftruncate(fd, 10), "EINVAL"),
        ("pread", lambda: m.pread(mfd, 1, -1), "EINVAL"),
        ("pread", lambda: m.pread(fd, 1, 0), "ESPIPE"),
        ("from_config", lambda: Machine.from_config({"x": 1}), "EINVAL"),
        ("fail_nth", lambda: setattr(m, "fail_nth", -1), "EINVAL"),
        ("fail_nth", lambda: setattr(m, "fail_nth", 1 << 32), "ERANGE"),
        ("eventfd", lambda: m.eventfd(0, 1 << 4), "EINVAL"),
    ]
    try:
        for call, fn, want in cases:
            with pytest.raises(OSError) as e:
                fn()
            assert errno.errorcode[e.value.errno or 0] == want, (call, e.value)
            assert f"``{want}``" in rows[call], (call, want)
        with pytest.raises(OSError) as e:
            child.open("/dev/iommu")
        assert e.value.errno == errno.ESRCH and "ESRCH" in table
    finally:
        m.shutdown()
