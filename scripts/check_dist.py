"""Check the built wheel and sdist in dist/: contents, version, and no stray files."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from airflow_provider_care360 import __version__  # noqa: E402

dist = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
[wheel] = dist.glob(f"airflow_provider_care360-{__version__}-py3-none-any.whl")
[sdist] = dist.glob(f"airflow_provider_care360-{__version__}.tar.gz")

names = zipfile.ZipFile(wheel).namelist()
problems = []
for shipped in (
    "airflow_provider_care360/testing/care360-openapi.json",
    "airflow_provider_care360/testing/pytest_plugin.py",
):
    if shipped not in names:
        problems.append(f"the wheel lacks {shipped}")
if "airflow_provider_care360/py.typed" not in names:
    problems.append("the wheel has no py.typed")
if any(n.startswith(("tests/", "example_dags/", "benchmarks/", "scripts/")) for n in names):
    problems.append("the wheel carries tests, examples, benchmarks or scripts")
entry_points = (
    zipfile.ZipFile(wheel).read(f"airflow_provider_care360-{__version__}.dist-info/entry_points.txt").decode()
)
if "apache_airflow_provider" not in entry_points or "get_provider_info" not in entry_points:
    problems.append("the wheel lacks the apache_airflow_provider entry point")

# The metadata users see: what they install, and no deprecated license form (PEP 639).
metadata = zipfile.ZipFile(wheel).read(f"airflow_provider_care360-{__version__}.dist-info/METADATA").decode()
headers = [line.partition(": ") for line in metadata.split("\n\n", 1)[0].splitlines()]
requires = [value for key, _, value in headers if key == "Requires-Dist"]
if any("extra ==" in r for r in requires):
    problems.append(f"the wheel publishes extras of tools users never install: {requires}")
if not any(r.replace(" ", "").startswith("requests") and "<3" in r for r in requires):
    problems.append("requests has no upper bound below 3")
classifiers = [value for key, _, value in headers if key == "Classifier"]
if ("License-Expression", ": ", "Apache-2.0") not in headers or any(
    c.startswith("License ::") for c in classifiers
):
    problems.append("the license must be the SPDX License-Expression alone, with no license classifier")

members = tarfile.open(sdist).getnames()
root = f"airflow_provider_care360-{__version__}/"
for needed in ("example_dags/example_care360_batch.py", "LICENSE", "README.md", "pyproject.toml"):
    if root + needed not in members:
        problems.append(f"the sdist lacks {needed}")

for problem in problems:
    print(f"dist check: {problem}", file=sys.stderr)
print(
    f"dist check: {wheel.name} ({len(names)} files), {sdist.name} ({len(members)} files): "
    f"{'FAILED' if problems else 'ok'}"
)
sys.exit(1 if problems else 0)
