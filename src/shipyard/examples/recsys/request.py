"""Write a V2 inference request that scores one MovieLens user against N candidate movies.

python -m shipyard.examples.recsys.request request.json [USER] [N]

The request holds the model's five inputs for N rows (the user's id, gender and occupation
repeated; one candidate item per row). The answer is one probability per candidate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from shipyard.artifact import write_text_atomic
from shipyard.examples.recsys.data import ITEMS, candidates

DATATYPES = {"int64": "INT64", "float32": "FP32"}


def request(user: int = 41, count: int = 8) -> dict[str, object]:
    """The V2 JSON request for ``user`` (0 to 942) against ``count`` items spread over the
    catalogue."""
    items = np.arange(count) * ITEMS // count
    return {
        "id": f"user {user} against {count} candidate items",
        "inputs": [
            {
                "name": name,
                "datatype": DATATYPES[str(array.dtype)],
                "shape": list(array.shape),
                "data": [round(float(v), 4) if array.dtype.kind == "f" else int(v) for v in
                         array.ravel()],
            }
            for name, array in candidates(user, items).items()
        ],
    }  # fmt: skip


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path("request.json")
    user = int(argv[1]) if len(argv) > 1 else 41
    count = int(argv[2]) if len(argv) > 2 else 8
    write_text_atomic(target, json.dumps(request(user, count)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
