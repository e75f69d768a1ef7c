"""Under torchrun (2 ranks): what `folder_layout` says for each rank's output folder and node assignment.

argv: NODES (comma-separated node rank per rank) DIRS (comma-separated folder per rank) RESULT_FILE
The node assignment is passed in, so one machine can stand for several nodes.
"""
import json
import sys

import torch.distributed as dist

from golong.trainer.checkpoint import folder_layout
from golong.world import World

dist.init_process_group("gloo")
rank = dist.get_rank()
nodes = [int(n) for n in sys.argv[1].split(",")]
dirs = sys.argv[2].split(",")
world = World(rank=rank, size=dist.get_world_size(), local_rank=nodes[:rank].count(nodes[rank]),  # rank on its node
              local_size=nodes.count(nodes[rank]), node_rank=nodes[rank], backend="gloo")
try:
    result = folder_layout(dirs[rank], world)
except RuntimeError as e:
    result = f"error: {e}"
if rank == 0:
    with open(sys.argv[3], "w") as f:
        json.dump(result, f)
dist.destroy_process_group()
