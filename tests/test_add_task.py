"""The README's "Add a task" section works as written: its code blocks, saved where their first-line comments
say, make a task that the documented dip-run command finds and runs (here for a few iterations)."""

import re
import shlex

from conftest import REPO, TINY, dip_cli


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_add_a_task_example_runs(tmp_path):
    text = section((REPO / "README.md").read_text(), "## Add a task")
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    files = [code for lang, code in blocks if lang in ("python", "yaml")]
    assert len(files) == 2
    for code in files:  # each file block starts with a comment naming its path
        path = re.match(r"# (\S+)\n", code).group(1)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(code)
    (tmp_path / "mytasks" / "__init__.py").touch()

    command = next(code for lang, code in blocks if lang == "bash").strip()
    args = shlex.split(command)
    assert args[:2] == ["PYTHONPATH=.", "dip-run"]  # dip_cli runs `python -m` from tmp_path: the same sys.path
    args = [a for a in args[2:] if not a.startswith("iterations=")]
    run_dir = tmp_path / "run"
    proc = dip_cli([*args, *TINY, "iterations=5", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"task": "colorization"' in (run_dir / "metrics.json").read_text()
    from PIL import Image

    assert Image.open(run_dir / "observed.png").mode == "L" and Image.open(run_dir / "restored.png").mode == "RGB"
