"""The repository's own promises: CI runs exactly the README's test command."""

import os
import re

from .conftest import BUNDLE_ROOT


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(BUNDLE_ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(BUNDLE_ROOT, ".ci", "run")) as f:
        ci = [line for line in f.read().splitlines() if line.startswith("bash setup.sh")]
    commands = re.findall(r"^bash setup\.sh --dev .*$", readme, flags=re.MULTILINE)
    assert ci == commands, (ci, commands)
