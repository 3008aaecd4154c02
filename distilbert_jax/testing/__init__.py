"""Test fixtures that users may run too: seeded random checkpoints at real configs, offline."""
