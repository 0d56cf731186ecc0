"""How many rows the batcher takes at once: the batch size that costs least per row, measured.

Batching pays when a call has a fixed cost (a small model, a GPU); on a CPU instance with one
thread a convolutional net can cost *more* per row in a large batch, its activations no longer
fitting in the caches. EfficientNet-Lite0 fp32 under ONNX Runtime with 1 thread, per image:
4.6 ms at batch 1 to 4, 5.1 at 8, 5.6-6.0 at 16 (AMD EPYC, 1 MB L2 per core). Served with
``max_batch_size`` 16 at concurrency 32 (``benchmarks/serve/images.py``), every batch held 16
images and inference took 5.9-6.2 ms per image; capped at 4, 5.1-5.3.

:class:`BatchSize` keeps, per size class (powers of two up to ``max_batch_size``), the mean
seconds per row of recent batches, and caps batches at the largest class within ``MARGIN`` of
the cheapest, when a larger class was measured dearer. Every ``EXPLORE``-th batch tries the
class above or below the cap, so the cap follows the model and the machine both ways.
"""

from __future__ import annotations

#: A larger batch is kept while its cost per row is within this fraction of the cheapest:
#: above the noise of a busy machine (a few %), below what Lite0 loses at 8 rows rather than
#: 4 (9-10%). Fewer, larger batches also cost the event loop less.
MARGIN = 0.08
#: Every this many batches, one tries the size class next to the cap.
EXPLORE = 32
#: Weight of the newest batch in a class's running mean; of a trial of the class.
_ALPHA = 0.2
_TRIAL_WEIGHT = 0.5


class BatchSize:
    """The most rows to put in the next batch, learned from the batches run so far."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        sizes, size = [], 1
        while size < max_rows:
            sizes.append(size)
            size *= 2
        self.sizes = [*sizes, max_rows]  # the classes: a batch of r rows is in the largest <= r
        self.cap = max_rows
        self._cost: dict[int, float] = {}  # class -> seconds per row (running mean)
        self._seen: set[int] = set()  # row counts run once: a new shape's first run is slow
        self._batches = 0
        self._trial: int | None = None
        self._up = True

    @property
    def limit(self) -> int:
        """Rows the next batch may take."""
        return self._trial if self._trial is not None else self.cap

    def _class(self, rows: int) -> int:
        return max(size for size in self.sizes if size <= rows)

    def observe(self, rows: int, seconds: float) -> None:
        """Record a batch of ``rows`` rows that ran in ``seconds``; move the cap."""
        if rows < 1 or rows > self.max_rows or seconds <= 0:
            return
        if rows not in self._seen:  # ONNX Runtime plans memory at a shape's first run
            self._seen.add(rows)
            return
        size = self._class(rows)
        previous = self._cost.get(size)
        per_row = seconds / rows
        if previous is None:
            self._cost[size] = per_row
        else:
            # A trial weighs half: a mean kept from long ago would hold the cap where it is.
            # If it was a lucky batch, the cap's class, run at every batch, soon says so.
            trial = self._trial is not None and size == self._class(self._trial)
            weight = _TRIAL_WEIGHT if trial else _ALPHA
            self._cost[size] = (1 - weight) * previous + weight * per_row
        self._trial = None
        self.cap = self._best()
        self._batches += 1
        if self._batches % EXPLORE == 0:
            self._trial = self._neighbour()

    def _best(self) -> int:
        cheapest = min(self._cost.values())
        good = max(size for size, cost in self._cost.items() if cost <= cheapest * (1 + MARGIN))
        dearer_above = any(size > good for size in self._cost)
        return good if dearer_above else self.max_rows

    def _neighbour(self) -> int | None:
        """The class above the cap and the one below, in turn (None at either end)."""
        index = self.sizes.index(self._class(self.cap))
        self._up = not self._up
        step = 1 if self._up else -1
        if 0 <= index + step < len(self.sizes):
            return self.sizes[index + step]
        return None
