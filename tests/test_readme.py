"""Every command in the README exists with the flags the README gives it.

Commands too heavy for a test (training on LRS2, inference with official weights) are
checked without running them: the entry point answers `--help`, every `--flag` the README
passes is one it documents, and every `--config.a.b=...` override names a field of the
config variant it is applied to. `make test` is what CI runs; `make demo` is covered by
`tests/test_demo.py`.
"""

import importlib
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
  text = (ROOT / "README.md").read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
      line = line.strip()
      if line and not line.startswith("#"):
        commands.append(re.sub(r"\s+#.*$", "", line))
  return commands


COMMANDS = readme_commands()


def _entry(argv: list[str]) -> tuple[list[str], list[str]]:
  """(python invocation of the entry point, its arguments), env assignments dropped."""
  argv = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]
  assert argv[0] == ".venv/bin/python", argv
  if argv[1] == "-m":
    return [sys.executable, "-m", argv[2]], argv[3:]
  return [sys.executable, str(ROOT / argv[1])], argv[2:]


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
  assert "make demo" in COMMANDS and "make test" in COMMANDS
  ci = (ROOT / ".ci" / "run").read_text()
  assert re.search(r"^make test$", ci, flags=re.M)
  makefile = (ROOT / "Makefile").read_text()
  assert re.search(r"^demo: env$", makefile, flags=re.M) and re.search(r"^test: env$", makefile, flags=re.M)


PY_COMMANDS = [c for c in COMMANDS if ".venv/bin/python" in c]


@pytest.mark.parametrize("command", PY_COMMANDS)
def test_readme_python_command_flags_exist(command):
  invocation, args = _entry(shlex.split(command))
  is_train = invocation[-1].endswith("train.py")
  help_flag = "--helpfull" if is_train else "--help"
  result = subprocess.run(invocation + [help_flag], cwd=ROOT, capture_output=True, text=True, timeout=300)
  # absl's --helpfull exits 1 by design; argparse's --help exits 0.
  assert result.returncode == (1 if is_train else 0), result.stderr[-2000:]
  documented = result.stdout + result.stderr
  assert "--" in documented and "Traceback" not in documented
  config = None
  for arg in args:
    if not arg.startswith("--"):
      continue
    name = arg.split("=", 1)[0]
    if name.startswith("--config."):
      assert config is not None, f"{command}: override before --config"
      node = config
      for part in name[len("--config."):].split("."):
        assert part in node, f"{command}: config has no field {name}"
        node = node[part]
      continue
    # absl lists boolean flags as --[no]name.
    pattern = rf"(^|[\s,\[])(--|--\[no\]){re.escape(name[2:])}\b"
    assert re.search(pattern, documented, flags=re.M), f"{command}: {name} is not a documented flag"
    if name == "--config":
      path, _, variant = arg.split("=", 1)[1].partition(":")
      module = importlib.import_module(pathlib.Path(path).with_suffix("").as_posix().replace("/", "."))
      config = module.get_config(variant or None)
