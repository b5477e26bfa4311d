"""The `decomposition` group (conf/decomposition/): how the n responses of a prompt are ranked,
all at once or in groups of k."""

from __future__ import annotations

from dataclasses import dataclass

from pad_lightning.app.schema.values import is_number, one_of, require
from pad_lightning.ranking.losses import max_group_size
from pad_lightning.ranking.plackett_luce import MAX_DP_N
from pad_lightning.training.objectives import OBJECTIVES

DECOMPOSITIONS = ("none", "split", "iterative")


@dataclass
class DecompositionGroup:
    """`none`: one ranking of all n; `split`: groups of `group_size` of one rollout; `iterative`:
    n / group_size on-policy rounds of `group_size` samples each."""

    name: str = "none"
    group_size: int | None = None  # k; split and iterative only (k divides n)

    def per_round(self, n: int) -> int:
        """Responses sampled per prompt in one rollout round: k for iterative, else n."""
        return self.group_size if self.name == "iterative" else n

    def group(self, n: int) -> int | None:
        """The size of the groups a loss ranks: k (split, iterative) or None (all n)."""
        return self.group_size if self.name in ("split", "iterative") else None

    def check(self, n: int, loss: str, divergence: str | None) -> None:
        """Own keys, and that loss `loss` can rank groups of this size exactly."""
        one_of(self.name, "decomposition.name", DECOMPOSITIONS)
        require(
            self.name != "split" or OBJECTIVES[loss].ranks,
            f"decomposition=split: ranks groups of k responses, which only loss=ppd|vpd do "
            f"(loss={loss}); use decomposition=none or iterative",
        )
        group = n
        if self.name != "none":
            k = self.group_size
            require(
                is_number(k, integer=True) and 2 <= k <= n and n % k == 0,
                f"decomposition.group_size={k!r}: must be an integer in [2, n={n}] dividing n",
            )
            group = k
        limit = max_group_size(loss, divergence)
        if limit is not None and group > limit:
            what = (
                f"enumerates all {group}! rankings"
                if divergence == "jsd"
                else f"runs a 2^{group}-subset dynamic programme"
            )
            ways = []
            if divergence == "jsd":
                ways.append(f"loss.divergence=kl or reverse_kl (exact to n={MAX_DP_N})")
            splits = [k for k in range(2, min(limit, n) + 1) if n % k == 0]
            if splits:
                best = max(splits)
                ways += [
                    f"decomposition=split decomposition.group_size={best}",
                    f"decomposition=iterative decomposition.group_size={best}",
                ]
            ways.append("loss=vpd")
            require(
                False,
                f"n={n}: loss=ppd loss.divergence={divergence} {what}, exact only for groups "
                f"of <= {limit}; use {', or '.join(ways)}",
            )
