"""The toy world: a tiny but real distillation setting built in code (no model hub needed)."""

from dskd_core.toy.world import TOY_WORLD_VERSION, ToyWorld, build_toy_world

__all__ = ["TOY_WORLD_VERSION", "ToyWorld", "build_toy_world"]
