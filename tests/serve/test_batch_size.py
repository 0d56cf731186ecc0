from shipyard.serve.batch_size import EXPLORE, BatchSize


def _run(size: BatchSize, per_row: dict[int, float], batches: int) -> None:
    """Feed ``batches`` batches, each as large as the size allows, costing ``per_row``."""
    for _ in range(batches):
        rows = size.limit
        cls = max(s for s in per_row if s <= rows)
        size.observe(rows, per_row[cls] * rows)


def test_a_model_cheaper_per_row_in_large_batches_keeps_the_largest() -> None:
    size = BatchSize(16)
    _run(size, {1: 50e-6, 2: 30e-6, 4: 20e-6, 8: 12e-6, 16: 8e-6}, 10 * EXPLORE)
    assert size.cap == 16


def test_a_model_dearer_per_row_in_large_batches_gets_capped_and_follows_a_change() -> None:
    # EfficientNet-Lite0, 1 thread: 4.6 ms per image up to batch 4, 5.1 at 8, 5.8 at 16.
    costs = {1: 4.6e-3, 2: 4.6e-3, 4: 4.7e-3, 8: 5.1e-3, 16: 5.8e-3}
    size = BatchSize(16)
    _run(size, costs, 10 * EXPLORE)
    assert size.cap == 4
    _run(size, {s: 1e-3 / s for s in costs}, 40 * EXPLORE)  # now batching pays again
    assert size.cap == 16


def test_sizes_that_are_not_powers_of_two_and_odd_observations() -> None:
    size = BatchSize(12)
    assert size.sizes == [1, 2, 4, 8, 12]
    size.observe(0, 1.0)  # ignored, as are batches above the maximum or of no time
    size.observe(13, 1.0)
    size.observe(3, 0.0)
    assert size.cap == 12 and size.limit == 12
    size.observe(12, 12 * 9e-3)  # a shape's first run (ONNX Runtime plans memory): not counted
    size.observe(1, 9e-3)
    assert size.cap == 12
    size.observe(12, 12 * 2e-3)
    size.observe(1, 1e-3)
    assert size.cap == 1
