"""Under torchrun (2 ranks): what `folder_layout` says for each rank's output folder and node assignment.

argv: NODES (comma-separated node rank per rank) DIRS (comma-separated folder per rank) RESULT_FILE
The node assignment is passed in, so one machine can stand for several nodes.
"""
import json
import sys

import torch.distributed as dist

from golong.trainer.checkpoint import folder_layout

dist.init_process_group("gloo")
rank = dist.get_rank()
nodes = [int(n) for n in sys.argv[1].split(",")]
dirs = sys.argv[2].split(",")
local_rank = nodes[:rank].count(nodes[rank])  # position among the ranks of its node
try:
    result = folder_layout(dirs[rank], nodes[rank], local_rank)
except RuntimeError as e:
    result = f"error: {e}"
if rank == 0:
    with open(sys.argv[3], "w") as f:
        json.dump(result, f)
dist.destroy_process_group()
