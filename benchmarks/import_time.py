"""How long ``import nbserve`` takes, next to ``import numpy`` measured in the same run.

Each import runs in a fresh interpreter (so nothing is cached in ``sys.modules``) and is timed inside
it with ``time.perf_counter()``, leaving out the interpreter's own start-up. The two are interleaved
so that machine noise hits both alike; the result is the ratio of the medians.

    python benchmarks/import_time.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, sys, time
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
heavy = sorted({{"torch", "onnxruntime", "transformers", "xgboost", "grpc", "aiohttp"}} & {{m.split(".")[0] for m in sys.modules}})
print(json.dumps({{"seconds": elapsed, "modules": len(sys.modules), "heavy": heavy}}))
"""


def time_import(module: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh interpreters per module (default 10)")
    args = parser.parse_args()

    samples: dict[str, list[dict]] = {"nbserve": [], "numpy": []}
    for _ in range(args.runs):
        for module in samples:
            samples[module].append(time_import(module))

    medians = {m: statistics.median(s["seconds"] for s in runs) for m, runs in samples.items()}
    for module, runs in samples.items():
        spread = [r["seconds"] * 1e3 for r in runs]
        print(
            f"import {module:8s} median {medians[module] * 1e3:7.1f} ms  "
            f"(min {min(spread):.1f}, max {max(spread):.1f}; {runs[0]['modules']} modules loaded)"
        )
    heavy = samples["nbserve"][0]["heavy"]
    print(f"heavy frameworks loaded by import nbserve: {', '.join(heavy) if heavy else 'none'}")
    print(f"ratio nbserve / numpy: {medians['nbserve'] / medians['numpy']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
