"""World.exchange_objects under torchrun: rank s sends rank d the object (s, d, payload of s*10+d bytes);
every rank checks that it got exactly what each rank addressed to it.

    torchrun --nproc_per_node=N tests/dist/world_exchange.py
"""
from golong.world import init_world

world = init_world()
sent = [(world.rank, d, bytes(world.rank * 10 + d)) for d in range(world.size)]
got = world.exchange_objects(sent)
assert got == [(s, world.rank, bytes(s * 10 + world.rank)) for s in range(world.size)], got
print(f"rank {world.rank}: ok")
