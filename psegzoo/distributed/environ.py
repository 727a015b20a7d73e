"""Who this process is in a torchrun job, read from torchrun's variables without torch.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``;
:meth:`Launch.from_environ` reads them once into a frozen value. Kept apart from
:mod:`.launch` so that a command can know its rank, and check its arguments, before torch is imported.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DistributedError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_TORCHRUN = "torchrun --nproc-per-node N -m psegzoo ..."


@dataclass(frozen=True)
class Launch:
    """This process's place in the job: global rank, number of processes, rank and count on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: keys of an earlier attempt are not reused
    omp_threads: int | None = None  # OMP_NUM_THREADS, when it holds a number

    def cpu_threads(self, cores: int) -> int:
        """torch's CPU threads for this process: the cores shared out between the processes on its node.

        torchrun sets ``OMP_NUM_THREADS=1`` for every process unless it is set already, which starves
        a machine with more cores than processes; so 1 counts as unset, and a larger value is the
        user's own choice and is kept.
        """
        if self.omp_threads is not None and self.omp_threads > 1:
            return self.omp_threads
        return max(1, cores // self.local_world_size)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, and the one that downloads first."""
        return self.rank == 0

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: the first process on its node."""
        return self.local_rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Launch:
        """Read torchrun's variables (``os.environ`` unless given); a job of one when they are absent."""
        env = os.environ if environ is None else environ
        if "RANK" not in env and "WORLD_SIZE" not in env:
            return cls()
        values = {}
        for name in LAUNCH_VARIABLES:
            raw = env.get(name, "").strip()
            try:
                values[name] = int(raw)
            except ValueError:
                raise DistributedError(
                    f"{name}={raw!r} is not a number; start psegzoo with {_TORCHRUN}, which sets "
                    f"{', '.join(LAUNCH_VARIABLES)}"
                ) from None
        omp = env.get("OMP_NUM_THREADS", "").strip()
        launch = cls(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"],
                     local_world_size=values["LOCAL_WORLD_SIZE"],
                     restart=int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
                     omp_threads=int(omp) if omp.isdigit() and int(omp) > 0 else None)
        if not (0 <= launch.rank < launch.world_size and 0 <= launch.local_rank < launch.local_world_size
                and launch.local_world_size <= launch.world_size):
            raise DistributedError(
                f"inconsistent launch variables RANK={launch.rank} WORLD_SIZE={launch.world_size} "
                f"LOCAL_RANK={launch.local_rank} LOCAL_WORLD_SIZE={launch.local_world_size}; start psegzoo with {_TORCHRUN}"
            )
        return launch
