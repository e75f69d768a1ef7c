"""MoE rollout routing replay (R3), behind one seam: the rollout side records the experts vLLM routed
each token to (rollout.py), the trainer side makes its MoE layers use them (trainer.py).

The core types know nothing of routes. The collector's Rollouts carry one `RouteRef` per response (where
its routes live), the planner fetches the routes of the units a rank trains through its one hook
(`RouteExtras`, golong/trainer/packing.py's `RowExtras`), and a packed micro-batch carries them in its
per-token `extras`, which sequence parallelism splits along the row and the model's forward receives.
"""
