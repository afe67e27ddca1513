"""``python -m bench.footprint``: item 3 (memory) alone, plus vpnoffload's sum during an outage.

For a quick memory check without the ~10 minutes of ``bench.run``: builds the
same lab (``bench.stage``), starts nginx and HAProxy, measures item 3 at 1, 100
and 1000 idle connections, then pulls home's cable, waits (≤ 20 s) until the
visitor gets the friendly page and the swap child has gone, and reads the sum
of every vpnoffload process on the VPS. Prints JSON; the lab is always torn down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import measure, memory
from bench.stage import Narrator, Stage, staged

OUTAGE_WAIT = 20.0


def outage_parts(stage: Stage) -> dict[str, tuple[int, int]]:
    """(RSS, PSS) KiB per vpnoffload component while home is down and the page is served."""
    stage.lab.pull_cable()
    try:
        deadline = time.monotonic() + OUTAGE_WAIT
        while time.monotonic() < deadline:
            parts = stage.vpnoffload_pids()
            if parts["page server"] and not parts["swap child"]:
                status, _ = stage.lab.http_get("visitor", f"http://{stage.lab.vps_address}/", timeout=2)
                if status == 503:
                    break
            time.sleep(0.3)
        time.sleep(2)
        return {name: measure.sum_memory(pids) for name, pids in stage.vpnoffload_pids().items()}
    finally:
        stage.lab.plug_cable()


def main() -> int:
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="vpnoffload-bench-"))
    os.chmod(scratch, 0o755)
    out: dict[str, object] = {}
    try:
        with staged(scratch, Narrator()) as stage:
            stage.start_alternatives()
            out["memory"] = [dataclasses.asdict(s) for s in memory.run(stage, levels=(1, 100, 1000))]
            out["outage"] = outage_parts(stage)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
