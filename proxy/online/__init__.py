"""Online quality: answers remembered for feedback, feedback joined to them, and the signals
a proxy sees by itself (re-queries, answers with no hit)."""
