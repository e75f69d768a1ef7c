"""World: a world of one (collectives are identities, never touching torch.distributed) and the point-to-point
exchange on 3 ranks."""
import os

import pytest

from conftest import REPO, run_torchrun
from golong.world import World, current_world


def test_a_world_of_one_collects_its_own_values():
    world = World(rank=0, size=1, local_rank=0, local_size=1, node_rank=0, backend="gloo")
    assert world.is_main and world.num_nodes == 1
    assert world.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert world.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert world.broadcast("x") == "x"
    world.barrier()


def test_current_world_without_a_process_group_is_one_process():
    world = current_world()
    assert (world.rank, world.size) == (0, 1)


def test_nodes_from_the_local_size():
    world = World(rank=9, size=16, local_rank=1, local_size=8, node_rank=1, backend="nccl")
    assert world.num_nodes == 2 and not world.is_main


def test_exchange_objects_in_a_world_of_one_returns_what_was_sent_and_checks_the_count():
    world = World(rank=0, size=1, local_rank=0, local_size=1, node_rank=0, backend="gloo")
    assert world.exchange_objects([{"k": 1}]) == [{"k": 1}]
    with pytest.raises(ValueError, match="one object per rank"):
        world.exchange_objects([1, 2])


@pytest.mark.multiproc
def test_exchange_objects_on_three_ranks_delivers_each_object_to_its_destination_only():
    out = run_torchrun(os.path.join(REPO, "tests", "dist", "world_exchange.py"), [], nproc=3, timeout=300)
    assert out.stdout.count(": ok") == 3
