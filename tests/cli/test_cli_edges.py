"""The command line's edges, as a new user hits them: --version, bad input as one line and
exit 2 (never a traceback), a failing script's own traceback, decode's word checks,
``run -v`` / ``run --list`` / ``run --trace``, graph JSON labels, trace filters and the
``[user]`` lines' results, the tour's summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from iommu_core.trace import LAYERS
from iommu_sim import KERNEL, Machine, __version__
from iommu_sim.cli import main
from iommu_sim.graph import Graph, Node, to_dot
from iommu_sim.scenario import builtin_scenarios, load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "gallery" / "vmm_script.py"


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], command: str) -> str:
    """Run ``argv``: exit 2, nothing but one line on stderr; that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"iommu-sim {command}: "), err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"iommu-sim {__version__} (follows Linux {KERNEL})"


@pytest.mark.parametrize("command", ["info", "trace", "graph"])
def test_bad_config_is_one_line(command: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    extra = [str(SCRIPT)] if command == "trace" else []
    cases = {"nope.toml": (None, "No such file"),
             "bad.toml": ("iommus = [\n", "not valid TOML"),
             "bad.json": ("{", "not valid JSON"),
             "unknown.toml": ('iommu = [{ name = "smmu0", driver = "arm_smmu_v3" }]\n',
                              "unknown config keys ['iommu']"),
             "list.json": ("[1, 2]", "expected a table")}
    for name, (text, message) in cases.items():
        cfg = tmp_path / name
        if text is not None:
            cfg.write_text(text)
        line = one_line_error(capsys, [command, *extra, "--config", str(cfg)], command)
        assert message in line, (name, line)


def test_graph_script_that_raises_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "boom.py"
    s.write_text("import os\n\n\ndef f():\n    raise ValueError('boom')\n\n\nf()\n")
    line = one_line_error(capsys, ["graph", "--script", str(s)], "graph")
    assert line.endswith(f"the script failed: {s}:5: ValueError: boom")
    assert "no script" in one_line_error(
        capsys, ["graph", "--script", str(tmp_path / "missing.py")], "graph")
    assert "no scenario file 'no_such'" in one_line_error(
        capsys, ["graph", "--scenario", "no_such"], "graph")


def test_trace_of_a_failing_script_shows_its_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    helper = tmp_path / "helper.py"
    helper.write_text("def bad(machine):\n    return machine.mem_read(0, 4)\n")
    s = tmp_path / "vmm.py"
    s.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
                 "from helper import bad\n\n\ndef main(machine):\n    bad(machine)\n")
    assert main(["trace", str(s), "--no-color"]) == 1
    err = capsys.readouterr().err
    # Python's own format, from the script's frame down to the user's failing call...
    assert re.search(rf'File "{re.escape(str(s))}", line 7, in main\n    bad\(machine\)', err)
    assert f'File "{helper}", line 2, in bad' in err
    assert "machine.mem_read(0, 4)" in err
    assert err.rstrip().splitlines()[-1].startswith("OSError: [Errno 14]")
    # ...and not the tool's frames nor the simulator's below the system call.
    assert "runpy" not in err and "cli.py" not in err and "machine.py" not in err


def test_trace_of_a_script_with_a_syntax_error(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "syntax.py"
    s.write_text("x = 1\nif x\n")
    assert main(["trace", str(s), "--no-color"]) == 1
    err = capsys.readouterr().err
    assert f'File "{s}", line 2' in err and "SyntaxError" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["decode", "ste", "--", "-1"], "a word cannot be negative: -1"),
    (["decode", "ste", "0x1ffffffffffffffff"], "word 0 (0x1ffffffffffffffff) is not a 64-bit"),
    (["decode", "ste", "0x1", "0x10000000000000000"], "word 1 (0x10000000000000000) is not a "
     "64-bit"),
    (["decode", "cmd", "0x100000000", "--vendor", "amd"], "is not a 32-bit word"),
    (["decode", "pte", "0x1ffffffffffffffff", "--format", "x86_64"], "is not a 64-bit"),
    (["decode", "ste", "0xzz"], "not a hex word: '0xzz'"),
    (["decode", "pte", "0x1", "--format", "x86_64", "--param", "levels"], "NAME=INTEGER"),
    (["decode", "nope", "0x1"], "unknown kind 'nope'"),
])
def test_decode_rejects_what_does_not_fit(argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert message in one_line_error(capsys, argv, "decode")


def test_decode_accepts_the_widest_word(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "pte", hex((1 << 64) - 1), "--format", "x86_64", "--no-color"]) == 0
    assert main(["decode", "cmd", "0xffffffff", "--vendor", "amd", "--no-color"]) == 0


def test_run_verbose_fills_in_variables(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    sc = tmp_path / "vars.toml"
    sc.write_text('name = "vars"\n[vars]\nDEV = "0000:00:01.0"\n'
                  '[[step]]\nopen = "/dev/iommu"\nas = "iommufd"\ntitle = "open for {DEV}"\n'
                  '[[step]]\nopen = "vfio:{DEV}"\n')
    assert main(["run", str(sc), "-v", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "open for 0000:00:01.0" in out and "open vfio:0000:00:01.0" in out
    assert "{DEV}" not in out


def test_run_list_keeps_whole_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, path in builtin_scenarios().items():
        assert name in out
        assert " ".join(load(path).description.split()) in out, name


def test_run_trace_names_ioctls_and_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tour_intel_vtd", "--trace", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "request 0x" not in out
    user = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("[user] ioctl")]
    assert user and all(re.match(r"\[user\] ioctl fd \d+ [A-Z_]+ ", ln) for ln in user), user
    assert "[user] ioctl fd 4 VFIO_DEVICE_BIND_IOMMUFD -> 0" in out


def test_tracer_render_names_ioctls() -> None:
    from iommufd import uapi as u

    with Machine.default() as m, m.trace() as tracer:
        fd = m.open("/dev/iommu")
        import ctypes
        m.ioctl(fd, u.IOMMU_IOAS_ALLOC, u.iommu_ioas_alloc(
            size=ctypes.sizeof(u.iommu_ioas_alloc)))
    assert f"[user] ioctl fd {fd} IOMMU_IOAS_ALLOC" in tracer.render()
    assert "IOMMU_IOAS_ALLOC" in tracer.to_json()
    assert "IOMMU_IOAS_ALLOC" in tracer._repr_html_()


def test_graph_json_labels_are_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--format", "json", "--scenario", "tour_arm_smmu_v3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    labels = [n["label"] for n in doc["nodes"]]
    assert any("\n" in lb for lb in labels)
    assert not any("\\n" in lb for lb in labels)
    # DOT escapes for itself: newline, quote and backslash
    g = Graph(clusters={"kernel": "kernel"})
    g.add(Node("a", 'two\nlines "quoted" C:\\dir', "device", "kernel"))
    assert r'a [label="two\nlines \"quoted\" C:\\dir", shape=component];' in to_dot(g)


def trace_lines(capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    assert main(["trace", str(SCRIPT), "--no-color", "--no-fold", *flags]) == 0
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]


def _layer(line: str) -> str:
    m = re.search(r"\[(\w+)\]", line)
    assert m, line
    return m[1]


def _depth(line: str) -> int:
    return len(re.match(r"^[│├└─ ]*", line)[0]) // 3  # type: ignore[index]


def test_trace_filters(capsys: pytest.CaptureFixture[str]) -> None:
    full = trace_lines(capsys)
    hw = trace_lines(capsys, "--layer", "user,hw")
    assert {_layer(ln) for ln in hw} == {"user", "hw"}
    assert len(hw) == sum(_layer(ln) in ("user", "hw") for ln in full)
    assert {_layer(ln) for ln in trace_lines(capsys, "--layer", "hw")} == {"hw"}
    maps = trace_lines(capsys, "--match", "map_*")
    assert maps and all(re.search(r"\] (map_\w+|iommu_map)", ln) is None or "map_" in ln
                        for ln in maps)
    assert len(maps) == sum("[driver] map_pages" in ln for ln in full)
    ioctls = trace_lines(capsys, "--match", "IOMMU_*", "--depth", "1")
    assert [ln.split(" -> ")[0] for ln in ioctls] == [
        "[user] ioctl fd 3 IOMMU_IOAS_ALLOC", "[user] ioctl fd 3 IOMMU_IOAS_MAP"]
    top = trace_lines(capsys, "--depth", "1")
    assert top == [ln for ln in full if _depth(ln) == 0]
    two = trace_lines(capsys, "--depth", "2")
    assert max(_depth(ln) for ln in two) == 1 and len(two) > len(top)


def test_trace_filter_errors(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["trace", str(SCRIPT), "--layer", "hw,nope"], "trace")
    assert f"unknown layer nope (layers: {', '.join(LAYERS)})" in line
    assert "at least 1" in one_line_error(capsys, ["trace", str(SCRIPT), "--depth", "0"],
                                          "trace")


def test_trace_json_is_filtered_and_named(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    assert main(["trace", str(SCRIPT), "--json", str(out), "--layer", "user"]) == 0
    doc = json.loads(out.read_text())
    assert [n["layer"] for n in doc] == ["user"] * 5 and not any("children" in n for n in doc)
    assert doc[0]["detail"] == "fd 4 VFIO_DEVICE_BIND_IOMMUFD" and doc[0]["result"] == "0"


def test_user_lines_say_what_each_call_returned(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    s = tmp_path / "dma.py"
    s.write_text(SCRIPT.read_text() + "try:\n    machine.dma_write(DEV, 0x10000, b'x')\n"
                 "except DmaFault:\n    pass\n")
    lines = trace_lines(capsys, "--depth", "1")
    assert lines[0] == "[user] ioctl fd 4 VFIO_DEVICE_BIND_IOMMUFD -> 0"
    assert lines[-1] == '[user] dma_read 0000:10:00.0 iova 0x10000 len 5 -> 68 65 6c 6c 6f ' \
        '"hello"'
    assert main(["trace", str(s), "--no-color", "--depth", "1"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    # A write to a read-only mapping: what it tried to write, and the fault.
    assert last.startswith('[user] dma_write 0000:10:00.0 iova 0x10000 len 1 data 78 "x" !! ')
    assert "DMA write by 0000:10:00.0 at 0x10000" in last


def test_user_line_of_a_long_dma_shows_its_first_bytes() -> None:
    from iommu_sim.traced import first_bytes

    assert first_bytes(b"hello") == '68 65 6c 6c 6f "hello"'
    assert first_bytes(bytes(range(20))) == "00 01 02 03 04 05 06 07 ... (20 bytes)"
    assert first_bytes(b"") == "(none)"


def test_tour_ends_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tour", "--vendor", "vtd", "--no-color"]) == 0
    out = capsys.readouterr().out.splitlines()
    i = out.index("summary")
    head = out[i + 1].split()
    row = out[i + 2].split()
    assert head == ["vendor", "steps", "ioctls", "DMAs", "faults", "entries", "written"]
    assert row[:6] == ["intel_vtd", "paging", "nested", "stale", "pasid", "fault"]
    assert out[-1].startswith("tour done in")
    assert len(out) - i <= 6  # short
    # The counts are the tour's: compare with its JSON.
    assert main(["tour", "--vendor", "vtd", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["tour"][0]["steps"]
    assert int(row[6]) == sum(s["action"] == "ioctl" for s in steps)
    assert int(row[7]) == sum(s["action"].startswith("dma_") for s in steps)
    assert int(row[8]) == sum(s["error"].startswith("DmaFault") for s in steps)
    assert int(row[9]) == sum(len(s["structures"]) for s in steps)
