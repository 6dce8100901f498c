"""
The JSON files of the repository in one format: 4-space indent, keys in their order, one value per line, a final
newline (what the model zoo's pretty-format-json hook writes). `--check` lists the files that differ and exits 1.

    python .ci/format_json.py          # rewrite
    python .ci/format_json.py --check  # CI
"""

import json
import subprocess
import sys


def formatted(text: str) -> str:
    return json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n"


def main(check: bool) -> int:
    files = subprocess.run(["git", "ls-files", "*.json"], capture_output=True, text=True, check=True).stdout.split()
    differ = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text != formatted(text):
            differ.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(formatted(text))
    if differ:
        print(("not formatted: " if check else "formatted: ") + ", ".join(differ))
    return int(check and bool(differ))


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
