"""``embedshift quality --online`` prints each version's line, the deltas and the interleaving."""

from __future__ import annotations

from proxy.cli.rollout import render_quality
from rollout_rules.online import quality_table
from rollout_rules.promotion import QualityRecord
from tests.unit.core.rollouts import rollout
from tests.unit.core.test_online import COUNTS


def test_the_table_reads_as_the_dashboard() -> None:
    golden = QualityRecord(stable="v1", stable_ndcg_at_10=0.513, candidate_ndcg_at_10=0.645)
    table = quality_table(rollout(), COUNTS, golden, {})
    text = render_quality(table, online=True)
    assert "v1       stable" in text and "0.5130" in text and "40.0%" in text
    assert "click-through candidate - stable: -15.0 points" in text
    assert "stable in 140, 20 ties, win share 0.30" in text and text.endswith(": worse")
    offline = render_quality(table, online=False)
    assert "0.6450" in offline and "clicked" not in offline
