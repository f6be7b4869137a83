"""The README's Python example and its test command stay true."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 12
    namespace = {}
    exec(compile(example, "README example", "exec"), namespace)
    model, opt = namespace["model"], namespace["opt"]
    first = model[0]
    assert first.weight.abs().max() <= 1.0  # clipped after the step
    assert set(first.quantized_weight.unique().tolist()) <= {-1.0, 1.0}


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    command = re.search(r"```bash\n(python -m pytest[^\n]*)\n```", README.read_text()).group(1)
    assert command in ci
