"""What batches.py refuses before it reads any data."""

from __future__ import annotations

import pytest

from mlx_ft.errors import UserError
from mlx_ft.training.batches import iterate_batches, pair_batches


class TwoWorkers:
    """The two calls batches make on an mlx.distributed group."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 2


@pytest.mark.parametrize("batches", [iterate_batches, pair_batches])
def test_a_batch_the_workers_cannot_share_equally_is_one_clear_error(batches):
    with pytest.raises(UserError, match=r"batch_size 3 must be divisible by the number of workers \(2\)"):
        next(batches(None, 3, 64, comm_group=TwoWorkers()))
