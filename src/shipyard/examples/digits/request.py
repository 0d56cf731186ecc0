"""Write a V2 inference request holding one real held-out digit: the demo's curl payload.

python -m shipyard.examples.digits.request demo-out/request.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shipyard.artifact import write_text_atomic
from shipyard.examples.digits.data import validation


def request(index: int = 0) -> dict[str, object]:
    """The V2 JSON request for held-out image ``index``; its label rides along in ``id``."""
    x, y = validation()
    image = x[index : index + 1]
    return {
        "id": f"held-out image {index}, label {int(y[index])}",
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(image.shape),
                "data": [round(float(v), 4) for v in image.ravel()],
            }
        ],
    }


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path("request.json")
    write_text_atomic(target, json.dumps(request()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
