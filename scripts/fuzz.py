"""
`make fuzz`: a bounded schemathesis pass against the simulator, from its own OpenAPI document.

Starts the simulator on a free loopback port (this interpreter), runs schemathesis (given as the
first argument: the venv that has it) with every check but one, and stops the simulator by its PID.
The one check left out, positive_data_acceptance, expects every schema-valid request to succeed:
Care360 rejects schema-valid bookings by rules no schema can state (a start that is past, off a
slot boundary or taken; a time zone name that is not a zone), with the documented 400.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "fuzz-" + os.urandom(6).hex()


def main() -> int:
    schemathesis = sys.argv[1]
    examples = sys.argv[2] if len(sys.argv) > 2 else "50"
    with tempfile.TemporaryDirectory(prefix="care360-fuzz-") as tmp:
        port_file = Path(tmp) / "port"
        sim = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_care360.testing", "--port", "0"]
            + ["--api-key", KEY, "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if sim.poll() is not None or time.monotonic() > deadline:
                    print("fuzz: the simulator did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            command = [
                schemathesis,
                "run",
                f"{url}/openapi.json",
                "--url",
                url,
                "-H",
                f"cv-api-key: {KEY}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                examples,
                "--workers",
                "2",
                "--seed",
                "360",
            ]
            result = subprocess.run(command)
            if sim.poll() is not None:
                print("fuzz: the simulator died during the run", file=sys.stderr)
                return 1
            return result.returncode
        finally:
            sim.terminate()
            sim.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
