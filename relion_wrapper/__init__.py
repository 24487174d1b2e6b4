"""RELION External job executables: pupick_relion_train and pupick_relion_pick (see docs/relion.md)."""
