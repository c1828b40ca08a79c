"""ELA's targets on a mesh: computed row-wise per device they equal the plain computation, and no device holds the
[global batch, vocab] array that XLA gathers for the plain one's scatters and top-k."""

from __future__ import annotations

from tests.helpers import module_report


def test_rowwise_targets_equal_the_plain_ones_without_a_global_batch_by_vocab_array():
    report = module_report("tests.sharded_targets", devices=8)
    assert report["plain_holds_batch_by_vocab"]  # the check finds the array where XLA gathers it
    assert not report["rowwise_holds_batch_by_vocab"], report
    assert report["largest_difference"] == 0.0, report
