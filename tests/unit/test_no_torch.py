"""The line PC has no torch: every module of the runtime package must import without it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, pkgutil, sys

class RejectTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch must not be imported by the runtime package (tried {name})")
        return None

sys.meta_path.insert(0, RejectTorch())
import edge
names = ["edge"] + [info.name for info in pkgutil.walk_packages(edge.__path__, "edge.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_edge_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 10
