"""Facts the integer lowering records on nodes for integer backends to read (node metadata keys).

The `intonly` lowering proves bounds on the operands of the integer MatMuls it writes; a backend may use
them to pick a narrower exact kernel (int16 pairs, 8-bit limbs) and must fall back to the general one
where a key is absent. Values are decimal integers joined by commas.

* `OPERAND_BOUNDS` — "max|a|,max|b|" of the (centred) operands of a MatMul;
* `OPERAND_RANGES` — "lo_a,hi_a,lo_b,hi_b" of the centred operands;
* `ROW_SUM_A` — a bound on Σ_k |a[..., i, k]|, only when known (e.g. softmax probabilities sum to one).
"""

__all__ = ["OPERAND_BOUNDS", "OPERAND_RANGES", "ROW_SUM_A"]

OPERAND_BOUNDS = "qcompile.operand_bounds"
OPERAND_RANGES = "qcompile.operand_ranges"
ROW_SUM_A = "qcompile.row_sum_a"
