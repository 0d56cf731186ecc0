"""One Prometheus text exposition from several replicas' (pure Python, no Ray import).

Each replica of the Ray engine counts its own requests in its own registry. ``/metrics``
gathers every replica's text and labels each sample with the replica it came from, as
Prometheus would if it scraped every replica itself: counters and histograms add up across
replicas with ``sum by (model, version, status)``. The text format wants all samples of a
metric family together, under one ``# HELP`` and one ``# TYPE`` line, so samples are grouped
by family in the order families first appear.
"""

from __future__ import annotations

from collections.abc import Iterable


def _labelled(sample: str, replica: str) -> str:
    """``name{a="1"} 2.0`` -> ``name{replica="r",a="1"} 2.0`` (also without labels)."""
    label = f'replica="{replica}"'
    brace = sample.find("{")
    space = sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner = sample[brace + 1 :]
        joiner = "" if inner.startswith("}") else ","
        return f"{sample[: brace + 1]}{label}{joiner}{inner}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge(parts: Iterable[tuple[str, bytes]]) -> bytes:
    """The expositions ``(replica id, text)`` as one, every sample labelled by replica."""
    families: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines, then its samples
    headers: dict[str, int] = {}  # family -> how many header lines it has
    for replica, text in parts:
        family = ""
        for line in text.decode("utf-8").splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                fields = line.split(" ", 3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    family = fields[2]
                    lines = families.setdefault(family, [])
                    if headers.get(family, 0) < 2 and line not in lines:
                        lines.insert(headers.get(family, 0), line)
                        headers[family] = headers.get(family, 0) + 1
                continue
            families.setdefault(family, []).append(_labelled(line, replica))
    return "".join(line + "\n" for lines in families.values() for line in lines).encode()


__all__ = ["merge"]
