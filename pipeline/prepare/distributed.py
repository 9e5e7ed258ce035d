"""Conversion across machines: the ranks of a torchrun job, and which shards each one converts.

    torchrun --nnodes=N --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --rdzv_id=convert tools/prepare_imagenet.py SRC OUT --workers=W

The only communication is through the rendezvous: a gloo group on the CPU used for a handful of
small collectives (the inputs each rank sees, the state of OUT, "my share is done"). Shard k of the
job's fixed shard list goes to rank k mod N, so the share is a pure function of the plan and N, and
every shard's bytes depend only on the plan: the result equals a single-process run's, byte for byte.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
from dataclasses import dataclass

# A rank waits in the final barrier for the slowest one: a share of a 14 M-image job takes hours.
# A dead peer still fails the barrier at once (its connection closes); torchrun restarts or stops.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; collectives run over the gloo group torchrun set up."""
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether the shard at ``index`` in the job's fixed shard order is this rank's to convert."""
        return index % self.world == self.rank

    def gather(self, obj) -> list:
        import torch.distributed as dist

        objs = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


SINGLE = Ranks(0, 1)


@contextlib.contextmanager
def torchrun_ranks():
    """The job's Ranks under torchrun (a gloo group for the duration), else SINGLE (no torch import)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        yield SINGLE
        return
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    try:
        yield Ranks(rank, world)
    finally:
        dist.destroy_process_group()


def host() -> str:
    return socket.gethostname()
